"""``rcnn data split``: new split files drawn from a dataset, stratified by class, images untouched.

Each image's stratum is its rarest class (images without objects are a stratum of their own); every
stratum is shuffled with the seed and cut by the fractions, so each class is spread over the splits
in the proportions asked for where its images allow. An existing ``test`` split is kept as it is and
its images are never divided. VOC: ``ImageSets/Main/<name>.txt``; YOLO: list files
``splits/<name>.txt`` of image paths, named in a new ``data.split.yaml``; LabelMe:
``splits/<name>.txt`` of ids; COCO: ``<stem>_<name>.json`` subsets of the instances file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset
from rcnn_cli.errors import UserError
from rcnn_cli.io import atomic_open

__all__ = ["assign_splits", "divisible", "write_splits"]


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
    keys = sorted(strata)
    shuffled = {k: [strata[k][i] for i in rng.permutation(len(strata[k]))] for k in keys}
    names = list(fractions)
    quotas = {name: _quotas([len(shuffled[k]) for k in keys], fractions[name], rng) for name in names[1:]}
    out: dict[str, list[str]] = {name: [] for name in fractions}
    for j, key in enumerate(keys):
        ids, start = shuffled[key], 0
        for name in names[1:]:
            n = min(quotas[name][j], len(ids) - start)
            out[name] += ids[start:start + n]
            start += n
        out[names[0]] += ids[start:]
    order = {r.image_id: i for i, r in enumerate(ds.records)}
    return {name: sorted(ids, key=order.__getitem__) for name, ids in out.items()}


def _quotas(sizes: list[int], fraction: float, rng: np.random.Generator) -> list[int]:
    """Per stratum, how many images a split of ``fraction`` takes: the floors of ``fraction x size``
    plus one more for the strata with the largest remainders (ties drawn), so that the split holds
    ``round(fraction x total)`` images even when every stratum is small."""
    exact = np.asarray(sizes, np.float64) * fraction
    quotas = np.floor(exact).astype(int)
    extra = int(round(fraction * sum(sizes))) - int(quotas.sum())
    if extra > 0:
        order = np.lexsort((rng.random(len(sizes)), -(exact - quotas)))
        quotas[order[:extra]] += 1
    return quotas.tolist()


def divisible(path: str | Path, split: str | None, images: str | Path | None = None) -> tuple[Dataset, list[str]]:
    """The images ``rcnn data split`` divides and the ids it leaves alone: ``split``'s images when
    named; else every image outside an existing ``test`` split (whose ids are returned, kept)."""
    from rcnn_cli.data.inputs import dataset_splits, load_dataset

    if split is not None:
        return load_dataset(path, split, images), []
    ds = load_dataset(path, None, images)
    if "test" not in (dataset_splits(path) or []):
        return ds, []
    test = {r.image_id for r in load_dataset(path, "test", images).records}
    ds.records = [r for r in ds.records if r.image_id not in test]
    return ds, sorted(test)


def _targets(path: Path, ds: Dataset, splits: dict[str, list[str]]) -> dict[Path, str]:
    """``{file: content}`` of the split files for the dataset at ``path`` in its own format."""
    by_id = {r.image_id: r for r in ds.records}
    files: dict[Path, str] = {}
    for name, ids in splits.items():
        if ds.format == "voc":
            target, lines = path / "ImageSets" / "Main" / f"{name}.txt", ids
        elif ds.format == "coco":
            files[path.with_name(f"{path.stem}_{name}.json")] = _coco_subset(path, {by_id[i].coco_id for i in ids})
            continue
        else:  # yolo, labelme: list files beside the data
            root = path.parent if path.is_file() else path
            target = root / "splits" / f"{name}.txt"
            lines = [str(by_id[i].path) for i in ids] if ds.format == "yolo" else ids
        files[target] = "".join(f"{line}\n" for line in lines)
    if ds.format == "yolo":
        files.update(_yolo_yaml(path, list(splits)))
    return files


def write_splits(path: str | Path, ds: Dataset, splits: dict[str, list[str]]) -> list[Path]:
    """Write the split files for the dataset at ``path`` in its own format; returns their paths.

    Only new files are written: a split file that exists with other content is a one-line error
    before anything is written (the same content again is no change). YOLO: the new split keys go
    into a new ``data.split.yaml`` beside ``data.yaml``, which stays as it was.
    """
    path = Path(path)
    files = _targets(path, ds, splits)
    for target, content in files.items():
        if target.exists() and target.read_text(encoding="utf-8") != content:
            raise UserError(f"{target} exists with other content: split names that are new (--train-name, "
                            "--val-name), or remove it yourself; nothing was written")
    for target, content in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target) as f:
            f.write(content)
    return list(files)


def _coco_subset(source: Path, keep: set) -> str:
    data = json.loads(source.read_text(encoding="utf-8"))
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    return json.dumps(data)


def _yolo_yaml(path: Path, names: list[str]) -> dict[Path, str]:
    import yaml

    from rcnn_cli.data.yolo import read_yolo_yaml

    yaml_path = path if path.is_file() else path / "data.yaml"
    data = read_yolo_yaml(yaml_path)
    data.update({name: str((yaml_path.parent / "splits" / f"{name}.txt").resolve()) for name in names})
    return {yaml_path.with_name("data.split.yaml"): yaml.safe_dump(data, sort_keys=False)}
