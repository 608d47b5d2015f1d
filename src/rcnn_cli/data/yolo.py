"""The YOLO (ultralytics) dataset layout: ``data.yaml`` naming the classes and the splits, images in
folders (or list files), one ``labels/.../<stem>.txt`` per image with ``class cx cy w h`` lines
normalised to ``[0, 1]``. The label file of an image is its path with the last ``images`` folder
replaced by ``labels`` and the suffix by ``.txt``; an image without one has no objects.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.images import IMAGE_EXTENSIONS, image_size
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.log import logger

__all__ = ["is_yolo_root", "load_yolo", "to_yolo", "label_path"]


def _yaml_path(path: Path) -> Path | None:
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return path
    for name in ("data.yaml", "data.yml"):
        if (path / name).is_file():
            return path / name
    return None


def is_yolo_root(path: str | os.PathLike) -> bool:
    """A folder with ``data.yaml`` (or the ``data.yaml`` itself)."""
    return _yaml_path(Path(path)) is not None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise UserError(f"{path}: a YOLO data.yaml needs 'names' (the classes)")
    names = data["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"{path}: 'names' must be a list of class names (or a mapping id -> name)")
    return dict(data, names=names)


def label_path(image: Path) -> Path:
    """``.../images/<rest>/<stem>.<ext>`` -> ``.../labels/<rest>/<stem>.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_images(root: Path, entry: Any, where: Path) -> list[Path]:
    """Image paths of one split entry: a folder, a list file of paths, or a list of either."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            out += [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines]
        else:
            raise UserError(f"{where}: split path {e!r} is neither a folder nor a list file")
    return out


def _parse_labels(path: Path, width: int, height: int, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    boxes, labels = [], []
    if not path.is_file():
        return np.zeros((0, 4), np.float32), []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            k, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, IndexError):
            raise UserError(f"{path}:{n}: expected 'class cx cy w h' (got {line.strip()!r})") from None
        if not 0 <= k < len(classes):
            raise UserError(f"{path}:{n}: class {k} is not in data.yaml's {len(classes)} names")
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        labels.append(classes[k])
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels


def load_yolo(path: str | os.PathLike, split: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Read a YOLO dataset split (``train``, ``val``, ``test`` or another key of ``data.yaml``)."""
    where = _yaml_path(Path(path))
    if where is None:
        raise UserError(f"{path}: no data.yaml (not a YOLO dataset)")
    data = _read_yaml(where)
    names = list(data["names"])
    root = Path(data.get("path") or where.parent)
    root = root if root.is_absolute() else where.parent / root
    split = split or "train"
    if split not in data:
        known = [k for k in data if k not in ("names", "nc", "path", "download")]
        raise UserError(f"{where}: no split '{split}' (it names {', '.join(known) or 'none'})")
    records = []
    for image in _split_images(root, data[split], where):
        try:
            width, height = image_size(image)
        except ImageError as e:
            logger.warning("%s; skipped", e)
            continue
        boxes, labels = _parse_labels(label_path(image), width, height, names)
        records.append(ImageRecord(image.stem, image, width, height, boxes, labels, np.zeros(len(labels), bool),
                                   np.zeros(len(labels), bool)))
    wanted = classes or names
    unknown = sorted({lab for r in records for lab in r.labels} - set(wanted))
    if unknown:
        raise UserError(f"{where}: classes {unknown} are not in --classes")
    return Dataset(root, split, list(wanted), records, format="yolo")


def _label_lines(rec, width: int, height: int, index: dict[str, int]) -> list[str]:
    lines = []
    for (x1, y1, x2, y2), lab in zip(np.asarray(rec.boxes, np.float64).reshape(-1, 4), rec.labels):
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{index[lab]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return lines


def to_yolo(ds: Dataset, out: str | os.PathLike, split: str = "train") -> Path:
    """Write ``ds`` as split ``split`` of a YOLO dataset in ``out`` (``images/<split>/``,
    ``labels/<split>/``, ``data.yaml``; other splits already in ``data.yaml`` are kept)."""
    import yaml

    from rcnn_cli.io import atomic_open

    out = Path(out)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(ds.classes)}
    for rec in ds.records:
        width, height = rec.width, rec.height
        if width is None:
            width, height = image_size(rec.path)
        target = out / "images" / split / rec.path.name
        if rec.path.exists() and not target.exists():
            shutil.copy2(rec.path, target)
        with atomic_open(label_path(target)) as f:
            f.writelines(_label_lines(rec, width, height, index))
    data = _read_yaml(out / "data.yaml") if (out / "data.yaml").is_file() else {}
    if data and data["names"] != list(ds.classes):
        raise UserError(f"{out}/data.yaml names {data['names']}, this split has {ds.classes}")
    data.update(path=".", names=list(ds.classes), **{split: f"images/{split}"})
    with atomic_open(out / "data.yaml") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return out
