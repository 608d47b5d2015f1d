"""The YOLO (ultralytics) dataset layout: ``data.yaml`` naming the classes and the splits, images in
folders (or list files), one ``labels/.../<stem>.txt`` per image with ``class cx cy w h`` lines
normalised to ``[0, 1]``. The label file of an image is its path with the last ``images`` folder
replaced by ``labels`` and the suffix by ``.txt``; an image without one has no objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_cli.boxes import from_yolo_boxes
from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.images import IMAGE_EXTENSIONS, image_size
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.log import logger

__all__ = ["is_yolo_root", "load_yolo", "yolo_splits", "yolo_names", "label_path", "read_yolo_yaml"]


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


def read_yolo_yaml(path: Path) -> dict[str, Any]:
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


#: ``data.yaml`` keys that are not splits.
_NOT_SPLITS = {"names", "nc", "path", "download", "kpt_shape", "flip_idx", "roboflow", "license", "url", "yaml_file"}


def _resolve(root: Path, entry: Any) -> Path:
    """A split entry as Ultralytics resolves it: absolute, else under ``root``; a leading ``../``
    that leads nowhere is tried without it (Roboflow's exports write ``train: ../train/images``)."""
    text = str(entry)
    p = Path(text)
    if p.is_absolute():
        return p
    if not (root / p).exists() and text.startswith("../") and (root / text[3:]).exists():
        return root / text[3:]
    return root / p


def _root(where: Path, data: dict[str, Any]) -> Path:
    """The folder split entries are relative to: ``path:`` (itself relative to the yaml's folder), else the yaml's folder."""
    root = Path(str(data.get("path") or "."))
    return root if root.is_absolute() else where.parent / root


def _entries(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """``{split: entry}``: the yaml's split keys, and ``test`` from a ``test/images`` folder beside
    the others when the yaml names none (Roboflow's exports ship it unnamed)."""
    out = {k: v for k, v in data.items() if k not in _NOT_SPLITS and isinstance(v, (str, list)) and v}
    if "test" not in out:
        for candidate in (_root(where, data) / "test" / "images", where.parent / "test" / "images"):
            if candidate.is_dir():
                out["test"] = str(candidate.resolve())
                break
    return out


def yolo_splits(path: str | os.PathLike) -> list[str]:
    """The split names of a YOLO dataset (see :func:`_entries`)."""
    where = _yaml_path(Path(path))
    return list(_entries(read_yolo_yaml(where), where)) if where is not None else []


def yolo_names(path: str | os.PathLike) -> list[str]:
    """The class names of a YOLO dataset's ``data.yaml``."""
    where = _yaml_path(Path(path))
    if where is None:
        raise UserError(f"{path}: no data.yaml (not a YOLO dataset)")
    return list(read_yolo_yaml(where)["names"])


def _split_images(root: Path, entry: Any, where: Path) -> tuple[list[Path], list[str]]:
    """Image paths of one split entry (a folder, a list file of paths, or a list of either) and the
    folders or files they came from."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    origins: list[str] = []
    for e in entries:
        p = _resolve(root, e)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            out += [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines]
        else:
            raise UserError(f"{where}: split path {e!r} is neither a folder nor a list file (looked for {p})")
        origins.append(str(p))
    return out, origins


def _parse_labels(path: Path, width: int, height: int, classes: list[str], notes: dict[str, int],
                  keypoints: bool = False) -> tuple[np.ndarray, list[str]]:
    """Boxes ``(N, 4)`` in pixels and class names of one label file. A line with more than five
    numbers is a segment (its box: the polygon's extent) or, with ``keypoints``, a pose label (its
    first four numbers); five numbers are a box and its confidence (``rcnn detect --format yolo``,
    Ultralytics' ``save_conf``); ``notes`` counts such files and empty ones, for one warning each."""
    boxes, labels = [], []
    if not path.is_file():
        return np.zeros((0, 4), np.float32), []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not any(ln.split() for ln in lines):
        notes["empty label files (images without objects)"] = notes.get("empty label files (images without objects)", 0) + 1
    extra = False
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            k, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'class cx cy w h' (got {line.strip()!r})") from None
        if len(values) < 4 or (len(values) > 5 and not keypoints and len(values) % 2):
            raise UserError(f"{path}:{n}: expected 'class cx cy w h [conf]' or 'class x1 y1 x2 y2 x3 y3 ...' "
                            f"(got {line.strip()!r})")
        if not 0 <= k < len(classes):
            raise UserError(f"{path}:{n}: class {k} is not in data.yaml's {len(classes)} names")
        if len(values) == 5:  # a prediction's confidence after the box
            extra = True
        if len(values) > 5 and not keypoints:
            extra = True
            xs, ys = np.asarray(values[0::2]) * width, np.asarray(values[1::2]) * height
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        else:
            extra = extra or len(values) > 4
            boxes.append(from_yolo_boxes(values[:4], width, height)[0])
        labels.append(classes[k])
    if extra:
        key = "label files with keypoints (box: the first four numbers)" if keypoints else \
            "label files with more than a box (segments: the polygon's extent; a confidence: ignored)"
        notes[key] = notes.get(key, 0) + 1
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels


def load_yolo(path: str | os.PathLike, split: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Read a YOLO dataset split (``train``, ``val``, ``test`` or another key of ``data.yaml``);
    ``split=None``: every split's images (each once)."""
    where = _yaml_path(Path(path))
    if where is None:
        raise UserError(f"{path}: no data.yaml (not a YOLO dataset)")
    data = read_yolo_yaml(where)
    names = list(data["names"])
    root = _root(where, data)
    entries = _entries(data, where)
    if split is not None and split not in entries:
        raise UserError(f"{where}: no split '{split}' (it names {', '.join(entries) or 'none'})")
    images: dict[Path, None] = {}  # ordered, each image once
    origins: list[str] = []
    for name in [split] if split is not None else list(entries):
        found, came_from = _split_images(root, entries[name], where)
        images.update(dict.fromkeys(found))
        origins += came_from
    records, notes = [], {}
    for image in images:
        try:
            width, height = image_size(image)
        except ImageError as e:
            logger.warning("%s; skipped", e)
            continue
        boxes, labels = _parse_labels(label_path(image), width, height, names, notes, "kpt_shape" in data)
        records.append(ImageRecord(image.stem, image, width, height, boxes, labels, np.zeros(len(labels), bool),
                                   np.zeros(len(labels), bool)))
    for what, count in notes.items():
        logger.warning("%s: %d %s", where, count, what)
    wanted = classes or names
    unknown = sorted({lab for r in records for lab in r.labels} - set(wanted))
    if unknown:
        raise UserError(f"{where}: classes {unknown} are not in --classes")
    return Dataset(root, split, list(wanted), records, format="yolo", origins=origins)
