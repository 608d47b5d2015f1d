"""``rcnn data convert``: Pascal VOC <-> COCO instances JSON."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.sax.saxutils import escape

from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import image_size
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.io import atomic_open, write_json
from rcnn_cli.log import logger


def _size(rec) -> tuple[int | None, int | None]:
    if rec.width is not None:
        return rec.width, rec.height
    try:
        return image_size(rec.path)
    except ImageError:
        return None, None


def to_coco(ds: Dataset, out: str | Path) -> Path:
    """Write ``ds`` as COCO instances JSON (``bbox = [x, y, w, h]``); ``file_name`` is relative to
    the VOC ``JPEGImages`` folder (pass it as ``--images`` when reading back)."""
    out = Path(out)
    images, annotations = [], []
    categories = [{"id": ds.category_ids[c], "name": c, "supercategory": "object"} for c in ds.classes]
    ann_id = 1
    for image_index, rec in enumerate(ds.records, start=1):
        width, height = _size(rec)
        coco_id = rec.coco_id if rec.coco_id is not None else image_index
        images.append({"id": coco_id, "file_name": rec.path.name, "width": width, "height": height})
        for box, label, difficult in zip(rec.boxes, rec.labels, rec.difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": ann_id, "image_id": coco_id, "category_id": ds.category_ids[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": max(x2 - x1, 0.0) * max(y2 - y1, 0.0),
                "iscrowd": int(bool(difficult)),
            })
            ann_id += 1
    write_json(out, {"images": images, "annotations": annotations, "categories": categories}, indent=None)
    return out


def _xml(rec, width, height) -> str:
    lines = ["<annotation>", f"  <filename>{escape(rec.path.name)}</filename>"]
    if width is not None:
        lines.append(f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for box, label, difficult, truncated in zip(rec.boxes, rec.labels, rec.difficult, rec.truncated):
        x1, y1, x2, y2 = (f"{float(v):g}" for v in box)
        lines += ["  <object>", f"    <name>{escape(label)}</name>", f"    <truncated>{int(truncated)}</truncated>",
                  f"    <difficult>{int(difficult)}</difficult>",
                  f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                  "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def to_voc(ds: Dataset, out: str | Path, split: str = "all", copy_images: bool = True) -> Path:
    """Write ``ds`` in VOC layout under ``out`` with split file ``ImageSets/Main/<split>.txt``."""
    out = Path(out)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for rec in ds.records:
        if "/" in rec.image_id or rec.image_id in ("", ".", ".."):
            raise UserError(f"image id {rec.image_id!r} cannot be a VOC file name")
        width, height = _size(rec)
        if copy_images:
            if rec.path.exists():
                target = out / "JPEGImages" / rec.path.name
                if not target.exists():
                    shutil.copy2(rec.path, target)
            else:
                logger.warning("%s: image file not found, annotation written without it", rec.path)
        with atomic_open(out / "Annotations" / f"{rec.image_id}.xml") as f:
            f.write(_xml(rec, width, height))
        ids.append(rec.image_id)
    with atomic_open(out / "ImageSets" / "Main" / f"{split}.txt") as f:
        f.write("\n".join(ids) + "\n")
    return out
