"""COCO detection metrics through pycocotools (not re-implemented): the ground truth and the
results are handed to ``COCO``/``COCOeval`` in memory.

Mapping: image ids through :func:`rcnn_cli.io.detections.coco_image_ids` (original ids for COCO
data), categories through ``Dataset.category_ids``; boxes ``x1, y1, x2, y2`` become
``[x, y, w, h]`` with ``w = x2 - x1``; ``difficult`` (COCO's ``iscrowd`` when read from COCO)
becomes ``iscrowd = 1``, which COCOeval ignores. Object areas (for APs/APm/APl) are box areas
unless the record carries ``areas`` (e.g. the segmentation areas of a COCO file).
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rcnn_cli.data.dataset import Dataset
    from rcnn_cli.boxes import ImageDetections

__all__ = ["COCO_KEYS", "build_coco_gt", "coco_results_array", "coco_evaluate"]

#: Names of COCOeval's first six summary numbers, in order.
COCO_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def build_coco_gt(dataset: "Dataset"):
    """A ``pycocotools.coco.COCO`` ground-truth object for ``dataset`` (built in memory)."""
    from pycocotools.coco import COCO

    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import coco_image_ids

    image_ids = coco_image_ids(dataset)
    cat_ids = {c: int(dataset.category_ids.get(c, i + 1)) for i, c in enumerate(dataset.classes)}
    images, annotations = [], []
    ann_id = 0
    for r in dataset.records:
        images.append({"id": image_ids[r.image_id], "file_name": r.path.name,
                       "width": int(r.width or 0), "height": int(r.height or 0)})
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        difficult = np.asarray(r.difficult, bool).reshape(-1)
        areas = getattr(r, "areas", None)
        for j, label in enumerate(r.labels):
            if label not in cat_ids:
                continue
            x1, y1, x2, y2 = boxes[j]
            w, h = x2 - x1, y2 - y1
            ann_id += 1
            annotations.append({
                "id": ann_id,
                "image_id": image_ids[r.image_id],
                "category_id": cat_ids[label],
                "bbox": [float(x1), float(y1), float(w), float(h)],
                "area": float(areas[j]) if areas is not None else float(w * h),
                "iscrowd": int(bool(difficult[j])) if j < len(difficult) else 0,
            })
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": cat_ids[c], "name": c} for c in dataset.classes]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_results_array(dataset: "Dataset", detections: Mapping[str, "ImageDetections"]) -> np.ndarray:
    """Detections as pycocotools' ``(N, 7)`` array ``[image_id, x, y, w, h, score, category_id]``."""
    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import coco_image_ids

    image_ids = coco_image_ids(dataset)
    cat_ids = {c: int(dataset.category_ids.get(c, i + 1)) for i, c in enumerate(dataset.classes)}
    parts = []
    for image_id, det in detections.items():
        if len(det) == 0 or image_id not in image_ids:
            continue
        keep = np.array([lab in cat_ids for lab in det.labels], bool)
        if not keep.any():
            continue
        b = det.boxes[keep].astype(np.float64)
        arr = np.empty((len(b), 7))
        arr[:, 0] = image_ids[image_id]
        arr[:, 1:3] = b[:, :2]
        arr[:, 3:5] = b[:, 2:] - b[:, :2]
        arr[:, 5] = det.scores[keep].astype(np.float64)
        arr[:, 6] = [cat_ids[lab] for lab, k in zip(det.labels, keep) if k]
        parts.append(arr)
    return np.concatenate(parts) if parts else np.zeros((0, 7))


def coco_evaluate(dataset: "Dataset", detections: Mapping[str, "ImageDetections"]) -> dict[str, Any]:
    """COCOeval ``bbox`` metrics: ``mAP`` (AP@[.5:.95]), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``
    (fractions; ``None`` where pycocotools reports -1, i.e. no objects of that size), per-class
    ``AP`` and ``AP50``, and ``curves`` (class -> (recall thresholds, precision at IoU 0.5))."""
    from pycocotools.cocoeval import COCOeval

    gt = build_coco_gt(dataset)
    results = coco_results_array(dataset, detections)
    cat_ids = {c: int(dataset.category_ids.get(c, i + 1)) for i, c in enumerate(dataset.classes)}
    has_objects = {c: len(gt.getAnnIds(catIds=[cat_ids[c]], iscrowd=False)) > 0 for c in dataset.classes}
    if len(results) == 0:
        # pycocotools cannot load an empty result list; with no detections every AP is 0.
        zero = {c: (0.0 if has_objects[c] else None) for c in dataset.classes}
        any_obj = any(has_objects.values())
        out = {k: (0.0 if any_obj else None) for k in COCO_KEYS}
        out.update(AP=zero, per_class_AP50=dict(zero),
                   curves={c: (np.linspace(0, 1, 101), np.zeros(101)) for c in dataset.classes})
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:6]]
    out: dict[str, Any] = {k: (v if v >= 0 else None) for k, v in zip(COCO_KEYS, stats)}
    precision = ev.eval["precision"]  # (T, R, K, A, M): IoU thresholds, recall thresholds, classes, areas, maxDets
    cat_pos = {cid: k for k, cid in enumerate(ev.params.catIds)}
    per_ap, per_ap50, curves = {}, {}, {}
    rec_thrs = np.asarray(ev.params.recThrs, np.float64)
    for c in dataset.classes:
        k = cat_pos[cat_ids[c]]
        p = precision[:, :, k, 0, -1]
        per_ap[c] = float(np.mean(p[p > -1])) if (p > -1).any() else None
        p50 = precision[0, :, k, 0, -1]
        per_ap50[c] = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else None
        curves[c] = (rec_thrs, np.where(p50 > -1, p50, np.nan))
    out.update(AP=per_ap, per_class_AP50=per_ap50, curves=curves)
    return out
