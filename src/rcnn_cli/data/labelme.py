"""LabelMe annotations: a folder of ``<image>.json`` files (``imagePath``, ``imageWidth``,
``imageHeight``, ``shapes`` of ``label`` + ``points``). Rectangles are read as boxes (polygons
as their bounding boxes); other shapes are skipped with one warning. Splits are list files of
image ids (``splits/<split>.txt``, as ``rcnn data split`` writes them); without a split every file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger

__all__ = ["is_labelme_folder", "load_labelme", "SPLITS_DIR"]

SPLITS_DIR = "splits"


def is_labelme_folder(path: str | os.PathLike) -> bool:
    """A folder whose JSON files are LabelMe annotations: the first one that parses has ``shapes``
    (a broken file does not hide the folder; :func:`load_labelme` names it)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for candidate in sorted(path.glob("*.json")):
        try:
            ann = json.loads(candidate.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        return isinstance(ann, dict) and "shapes" in ann
    return False


def _record(path: Path, skipped: dict[str, int]) -> ImageRecord:
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not isinstance(ann, dict) or not isinstance(ann.get("shapes"), list) or "imagePath" not in ann:
        raise UserError(f"{path}: not a LabelMe annotation (needs 'imagePath' and 'shapes')")
    boxes, labels = [], []
    for shape in ann["shapes"]:
        kind = shape.get("shape_type") or "polygon"
        pts = np.asarray(shape.get("points") or [], np.float32).reshape(-1, 2)
        if kind not in ("rectangle", "polygon") or len(pts) < 2 or not shape.get("label"):
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        boxes.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
        labels.append(str(shape["label"]))
    image = (path.parent / ann["imagePath"]).resolve()
    width, height = ann.get("imageWidth"), ann.get("imageHeight")
    return ImageRecord(path.stem, image, int(width) if width else None, int(height) if height else None,
                       np.asarray(boxes, np.float32).reshape(-1, 4), labels, np.zeros(len(labels), bool),
                       np.zeros(len(labels), bool))


def load_labelme(folder: str | os.PathLike, split: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Read a LabelMe folder (one split from ``splits/<split>.txt``, or every annotation)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if split is not None:
        listing = folder / SPLITS_DIR / f"{split}.txt"
        if not listing.is_file():
            raise UserError(f"{folder}: no split '{split}' ({listing} not found; `rcnn data split` writes it)")
        wanted = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
        by_stem = {f.stem: f for f in files}
        missing = [w for w in wanted if w not in by_stem]
        if missing:
            raise UserError(f"{listing}: {len(missing)} ids have no annotation file, e.g. {missing[0]}")
        files = [by_stem[w] for w in wanted]
    skipped: dict[str, int] = {}
    records = []
    for f in files:
        try:
            records.append(_record(f, skipped))
        except UserError as e:  # one broken file: skipped, named
            logger.warning("%s; skipped", e)
    if skipped:
        logger.warning("%s: skipped shapes that are not rectangles or polygons: %s", folder,
                       ", ".join(f"{n} {k}" for k, n in skipped.items()))
    names = classes or sorted({lab for r in records for lab in r.labels})
    unknown = sorted({lab for r in records for lab in r.labels} - set(names))
    if unknown:
        raise UserError(f"{folder}: classes {unknown} are not in --classes")
    return Dataset(folder, split, list(names), records, format="labelme")
