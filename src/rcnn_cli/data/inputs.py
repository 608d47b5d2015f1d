"""Image inputs for stages that need no labels: files, folders, globs, list files, ``-`` (stdin),
or a labelled dataset (VOC root with ``--split``, COCO JSON with ``--images``)."""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

from rcnn_cli.data.coco import load_coco
from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import IMAGE_EXTENSIONS
from rcnn_cli.data.voc import is_voc_root, load_voc
from rcnn_cli.errors import UserError


@dataclass(frozen=True)
class ImageInput:
    """An image to process: its id (file stem or dataset id), path, and what the detections record
    about it beside the boxes (``meta``: a video frame's ``frame`` and ``time_s``)."""

    image_id: str
    path: Path
    meta: dict | None = field(default=None, hash=False, compare=False)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_dataset(path: str | Path) -> bool:
    """A VOC root, a COCO ``.json`` file, a YOLO dataset (``data.yaml``) or a LabelMe folder."""
    from rcnn_cli.data.labelme import is_labelme_folder
    from rcnn_cli.data.yolo import is_yolo_root

    path = Path(path)
    return (is_voc_root(path) or (path.is_file() and path.suffix.lower() == ".json") or is_yolo_root(path)
            or is_labelme_folder(path))


def load_dataset(path: str | Path, split: str | None = None, images: str | Path | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load a labelled dataset: a VOC root (``split``), a COCO instances JSON (``images``), a YOLO
    dataset (its ``data.yaml`` or folder; ``split`` a key of it) or a LabelMe folder."""
    from rcnn_cli.data.labelme import is_labelme_folder, load_labelme
    from rcnn_cli.data.yolo import is_yolo_root, load_yolo

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset not found")
    if is_voc_root(path):
        return load_voc(path, split, classes)
    if is_yolo_root(path):
        return load_yolo(path, split, classes)
    if path.suffix.lower() == ".json":
        return load_coco(path, images, classes)
    if is_labelme_folder(path):
        return load_labelme(path, split, classes)
    raise UserError(f"{path}: not a dataset (expected a VOC root with Annotations/, a COCO .json, a YOLO data.yaml "
                    "or a folder of LabelMe .json files)")


def _read_list(lines: Iterable[str], base: Path | None) -> list[Path]:
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        if base is not None and not p.is_absolute() and not p.exists() and (base / p).exists():
            p = base / p
        paths.append(p)
    return paths


def _unique_ids(paths: list[Path]) -> list[ImageInput]:
    out, seen = [], {}
    for p in paths:
        image_id = p.stem
        if image_id in seen and seen[image_id] != p:
            # Two files share a stem (e.g. a/x.jpg and b/x.jpg): disambiguate with the parent path.
            image_id = str(p.with_suffix("")).replace("/", "_")
        seen.setdefault(image_id, p)
        out.append(ImageInput(image_id, p))
    return out


def resolve_inputs(items: list[str], split: str | None = None, images: str | None = None,
                   stdin: TextIO | None = None) -> list[ImageInput]:
    """Expand CLI inputs into a list of images (in order, duplicates removed).

    Each item is an image file, a folder (its images, recursively, sorted), a glob pattern, a text
    file with one path per line, ``-`` for paths on standard input, or a dataset (VOC root /
    COCO JSON) whose ``split`` images are taken. Missing paths are a :class:`UserError`.
    """
    paths: list[Path] = []
    dataset_inputs: list[ImageInput] = []
    for item in items:
        if item == "-":
            paths += _read_list((stdin or sys.stdin), None)
            continue
        p = Path(item)
        if is_dataset(p):
            ds = load_dataset(p, split, images)
            dataset_inputs += [ImageInput(r.image_id, r.path) for r in ds.records]
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise UserError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.is_file() and is_image_file(p):
            paths.append(p)
        elif p.is_file():
            paths += _read_list(p.read_text(encoding="utf-8").splitlines(), p.parent)
        elif any(c in item for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if is_image_file(Path(m)))
            if not matched:
                raise UserError(f"{item}: pattern matches no images")
            paths += matched
        else:
            raise UserError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return dataset_inputs + _unique_ids(unique)
