"""``rcnn data info``: what a dataset holds and what is wrong with it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rcnn_cli.boxes import box_problems
from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import image_size, inspect_image
from rcnn_cli.errors import ImageError


def dataset_info(ds: Dataset, check_images: bool = True) -> dict[str, Any]:
    """Counts, sizes and problems of ``ds``.

    Problems: ``zero-area``, ``inverted`` and ``out-of-image`` boxes, ``missing-image`` /
    ``unreadable-image`` files, ``truncated-image`` files (used, decoded in the tolerant mode) and
    ``size-mismatch`` between the annotation and the image file. With ``check_images`` every image
    is decoded.
    """
    objects: Counter[str] = Counter()
    difficult: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    problems: list[dict[str, Any]] = []
    for rec in ds.records:
        width, height = rec.width, rec.height
        if check_images:
            try:
                actual = image_size(rec.path)
                damage = inspect_image(rec.path)
                if damage:
                    problems.append({"image_id": rec.image_id, "problem": "truncated-image",
                                     "detail": f"{damage}; used, the missing rows grey"})
            except ImageError as e:
                kind = "missing-image" if not rec.path.exists() else "unreadable-image"
                problems.append({"image_id": rec.image_id, "problem": kind, "detail": str(e)})
                actual = None
            if actual is not None:
                if width is not None and (width, height) != actual:
                    problems.append({"image_id": rec.image_id, "problem": "size-mismatch",
                                     "detail": f"annotation says {width}x{height}, image is {actual[0]}x{actual[1]}"})
                width, height = actual
        if width is not None:
            sizes[(width, height)] += 1
        for name, flag in zip(rec.labels, rec.difficult):
            objects[name] += 1
            difficult[name] += int(bool(flag))
        for i, problem in box_problems(rec.boxes, width, height):
            problems.append({"image_id": rec.image_id, "problem": problem, "label": rec.labels[i],
                             "box": [float(v) for v in rec.boxes[i]]})
    return {
        "format": ds.format,
        "root": str(ds.root),
        "split": ds.split,
        "split_from": list(ds.origins),
        "num_images": len(ds.records),
        "num_objects": sum(objects.values()),
        "classes": ds.classes,
        "objects_per_class": {c: objects.get(c, 0) for c in ds.classes},
        "difficult_per_class": {c: difficult.get(c, 0) for c in ds.classes},
        "images_without_objects": sum(1 for r in ds.records if len(r.labels) == 0),
        "mean_objects_per_image": sum(len(r.labels) for r in ds.records) / max(len(ds.records), 1),
        "max_objects_per_image": max((len(r.labels) for r in ds.records), default=0),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "problems": problems,
        "problem_counts": dict(Counter(p["problem"] for p in problems)),
        "bad_box_policy": "in training, zero-area, inverted and wholly out-of-image boxes are skipped "
                          "with a warning; boxes reaching past the border are clipped",
    }
