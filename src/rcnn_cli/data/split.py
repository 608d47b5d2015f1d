"""``rcnn data split``: new split files drawn from a dataset, stratified by class, images untouched.

Each image's stratum is its rarest class (images without objects are a stratum of their own); every
stratum is shuffled with the seed and cut by the fractions, so each class is spread over the splits
in the proportions asked for where its images allow. VOC: ``ImageSets/Main/<name>.txt``; YOLO: list
files ``splits/<name>.txt`` of image paths added to ``data.yaml``; LabelMe: ``splits/<name>.txt``
of ids; COCO: ``<stem>_<name>.json`` subsets of the instances file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset
from rcnn_cli.errors import UserError
from rcnn_cli.io import atomic_open, write_json

__all__ = ["assign_splits", "write_splits"]


def assign_splits(ds: Dataset, fractions: dict[str, float], seed: int = 0) -> dict[str, list[str]]:
    """``{split: [image ids]}``: ``fractions`` of the images (the first split takes the rest)."""
    if any(f < 0 for f in fractions.values()) or sum(list(fractions.values())[1:]) >= 1:
        raise UserError(f"split fractions must be >= 0 and leave images for '{next(iter(fractions))}'")
    frequency = Counter(lab for r in ds.records for lab in set(r.labels))
    strata: dict[str, list[str]] = {}
    for r in ds.records:
        key = min(set(r.labels), key=lambda c: (frequency[c], c)) if r.labels else ""
        strata.setdefault(key, []).append(r.image_id)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {name: [] for name in fractions}
    names = list(fractions)
    for key in sorted(strata):
        ids = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        start = 0
        for name in names[1:]:
            n = int(round(fractions[name] * len(ids)))
            out[name] += ids[start:start + n]
            start += n
        out[names[0]] += ids[start:]
    order = {r.image_id: i for i, r in enumerate(ds.records)}
    return {name: sorted(ids, key=order.__getitem__) for name, ids in out.items()}


def write_splits(path: str | Path, ds: Dataset, splits: dict[str, list[str]]) -> list[Path]:
    """Write the split files for the dataset at ``path`` in its own format; returns their paths."""
    path = Path(path)
    by_id = {r.image_id: r for r in ds.records}
    written = []
    for name, ids in splits.items():
        if ds.format == "voc":
            target = path / "ImageSets" / "Main" / f"{name}.txt"
            lines = ids
        elif ds.format == "coco":
            target = path.with_name(f"{path.stem}_{name}.json")
            written.append(_coco_subset(path, target, {by_id[i].coco_id for i in ids}))
            continue
        else:  # yolo, labelme: list files beside the data
            root = path.parent if path.is_file() else path
            target = root / "splits" / f"{name}.txt"
            lines = [str(by_id[i].path) for i in ids] if ds.format == "yolo" else ids
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target) as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        written.append(target)
    if ds.format == "yolo":
        _add_yolo_splits(path, list(splits))
    return written


def _coco_subset(source: Path, target: Path, keep: set) -> Path:
    data = json.loads(source.read_text(encoding="utf-8"))
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    write_json(target, data, indent=None)
    return target


def _add_yolo_splits(path: Path, names: list[str]) -> None:
    import yaml

    yaml_path = path if path.is_file() else path / "data.yaml"
    data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    data.update({name: f"splits/{name}.txt" for name in names})
    with atomic_open(yaml_path) as f:
        yaml.safe_dump(data, f, sort_keys=False)
