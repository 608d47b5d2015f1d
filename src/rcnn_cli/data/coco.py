"""COCO instances JSON. ``image_id`` is the file name's stem; the original ids are kept for
results (``ImageRecord.coco_id`` and ``Dataset.category_ids``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.errors import UserError
from rcnn_cli.io import read_json


def load_coco(json_path: str | Path, images: str | Path | None = None, classes: list[str] | None = None) -> Dataset:
    """Load COCO instances JSON; ``images`` is the folder the ``file_name`` entries are relative to.

    ``iscrowd`` objects are kept as ``difficult`` (ignored by evaluation, skipped in training).
    """
    json_path = Path(json_path)
    data = read_json(json_path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise UserError(f"{json_path}: not a COCO instances file (needs images, annotations, categories)")
    image_dir = Path(images) if images else json_path.parent
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        names = [cats[k] for k in sorted(cats)]
        category_ids = {v: k for k, v in cats.items()}
        per_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            per_image.setdefault(int(ann["image_id"]), []).append(ann)
        records: list[ImageRecord] = []
        seen: set[str] = set()
        for img in data["images"]:
            file_name = str(img["file_name"])
            image_id = Path(file_name).stem
            if image_id in seen:
                raise UserError(f"{json_path}: two images share the name stem '{image_id}'")
            seen.add(image_id)
            path = image_dir / file_name
            if not path.resolve().is_relative_to(image_dir.resolve()):
                raise UserError(f"{json_path}: image path {file_name} escapes {image_dir}")
            anns = per_image.get(int(img["id"]), [])
            boxes = []
            for a in anns:
                x, y, w, h = (float(v) for v in a["bbox"])
                boxes.append([x, y, x + w, y + h])
            records.append(ImageRecord(
                image_id=image_id,
                path=path,
                width=int(img["width"]) if img.get("width") else None,
                height=int(img["height"]) if img.get("height") else None,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=[cats[int(a["category_id"])] for a in anns],
                difficult=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool),
                truncated=np.zeros(len(anns), bool),
                coco_id=int(img["id"]),
                areas=np.asarray([float(a.get("area", float(a["bbox"][2]) * float(a["bbox"][3]))) for a in anns],
                                 np.float64),
            ))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{json_path}: malformed COCO entry ({type(e).__name__}: {e})") from None
    if classes:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise UserError(f"unknown class(es) in {json_path}: {', '.join(unknown)} (not in --classes)")
        names = list(classes)
    # Class order follows category id, so that indices line up with the original numbering.
    return Dataset(root=image_dir, split=None, classes=names, records=records, format="coco",
                   category_ids={n: category_ids[n] for n in names if n in category_ids})
