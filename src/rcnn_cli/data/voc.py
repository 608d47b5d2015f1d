"""Pascal VOC devkit layout: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/``,
``ROOT/ImageSets/Main/<split>.txt``. XML is parsed with defusedxml; paths that escape the
dataset root are refused."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.images import IMAGE_EXTENSIONS
from rcnn_cli.errors import UserError


def is_voc_root(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "Annotations").is_dir()


def inside_root(root: Path, candidate: Path, what: str) -> Path:
    """Resolve ``candidate`` and refuse it if it escapes ``root``."""
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(f"{what} {candidate} escapes the dataset root {root}")
    return resolved if candidate.is_absolute() else candidate


def split_ids(root: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (first token per line, blank lines skipped)."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt")) if (root / "ImageSets" / "Main").is_dir() else []
        hint = f" (available: {', '.join(available)})" if available else ""
        raise UserError(f"split '{split}' not found: {split_file} does not exist{hint}")
    ids = []
    for line in split_file.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if tokens:
            ids.append(tokens[0])
    return ids


def _text(node: Element | None, tag: str, default: str | None = None) -> str | None:
    if node is None:
        return default
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return default
    return child.text.strip()


def _number(node: Element | None, tag: str, xml_path: Path) -> float:
    value = _text(node, tag)
    if value is None:
        raise UserError(f"{xml_path}: object box is missing <{tag}>")
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{xml_path}: <{tag}> is not a number: {value!r}") from None


def _flag(node: Element, tag: str) -> bool:
    value = _text(node, tag, "0")
    try:
        return bool(int(float(value)))
    except ValueError:
        return value.lower() in ("true", "yes")


def find_image(root: Path, image_id: str, filename: str | None) -> Path:
    """The image file for ``image_id``: ``<filename>`` from the XML, else ``JPEGImages/<id>.<ext>``."""
    images = root / "JPEGImages"
    if filename:
        return inside_root(root, images / filename, "image path")
    for ext in IMAGE_EXTENSIONS:
        candidate = images / f"{image_id}{ext}"
        if candidate.exists():
            return candidate
    return images / f"{image_id}.jpg"


def parse_annotation(root: Path, image_id: str) -> ImageRecord:
    """Read ``Annotations/<image_id>.xml`` into an :class:`ImageRecord`."""
    xml_path = inside_root(root, root / "Annotations" / f"{image_id}.xml", "annotation path")
    if not xml_path.is_file():
        raise UserError(f"{xml_path}: annotation file not found")
    try:
        tree = SafeET.parse(xml_path)
    except (ParseError, DefusedXmlException) as e:
        raise UserError(f"{xml_path}: malformed XML ({e})") from None
    ann = tree.getroot()
    size = ann.find("size")
    width = _text(size, "width")
    height = _text(size, "height")
    try:
        width_i = int(float(width)) if width else None
        height_i = int(float(height)) if height else None
    except ValueError:
        width_i = height_i = None
    if not width_i or not height_i:  # 0 or missing: unknown
        width_i = height_i = None
    boxes, labels, difficult, truncated = [], [], [], []
    for obj in ann.findall("object"):
        name = _text(obj, "name")
        if name is None:
            raise UserError(f"{xml_path}: <object> without <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"{xml_path}: object '{name}' has no <bndbox>")
        boxes.append([_number(bb, t, xml_path) for t in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(name)
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    return ImageRecord(
        image_id=image_id,
        path=find_image(root, image_id, _text(ann, "filename")),
        width=width_i,
        height=height_i,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=labels,
        difficult=np.asarray(difficult, bool),
        truncated=np.asarray(truncated, bool),
    )


def load_voc(root: str | Path, split: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Load a VOC-layout dataset. ``split=None`` reads every annotation file.

    Classes come from ``classes`` when given (objects of other classes are an error), else from the
    data, sorted.
    """
    root = Path(root)
    if not is_voc_root(root):
        raise UserError(f"{root}: not a VOC dataset root (no Annotations/ folder)")
    ids = split_ids(root, split) if split else sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    records = [parse_annotation(root, i) for i in ids]
    found = sorted({name for r in records for name in r.labels})
    if classes:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(f"unknown class(es) in {root}: {', '.join(unknown)} (not in --classes)")
    return Dataset(root=root, split=split, classes=list(classes) if classes else found, records=records, format="voc")
