"""The ILSVRC localization metric (``rcnn evaluate --metric loc``).

Each image gets up to ``guesses`` (5) ``(class, box)`` guesses: its detections ranked by score.
An image is correctly localized by a guess that has one of the image's ground-truth classes and
IoU >= ``iou`` (0.5) with a ground-truth box of that class. Errors are fractions of the images
that have ground truth (images without objects are left out and counted):

- ``top1_loc_error`` / ``top5_loc_error``: no correct guess among the first 1 / 5;
- ``top1_cls_error`` / ``top5_cls_error``: no guess of a ground-truth class among them (boxes ignored);
- ``gt_known_loc_error``: the class is given (the image's class: that of its largest object); the
  best-scoring guess of that class is not correct, or there is none (the "GT known" figure of the
  ResNet paper).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from rcnn_cli.errors import UserError

__all__ = ["localization_errors", "image_class"]


def image_class(boxes: np.ndarray, labels: list[str]) -> str:
    """The class of an image for localization: that of its largest box (the first of equals)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return labels[int(np.argmax(areas))]


def _correct(box: np.ndarray, label: str, gt: np.ndarray, gt_labels: np.ndarray, iou: float) -> bool:
    from rcnn_cli.boxes import iou_matrix

    same = gt[gt_labels == label]
    return bool(len(same)) and float(iou_matrix(box[None], same).max()) >= iou


def localization_errors(dataset, detections: Mapping[str, Any], guesses: int = 5, iou: float = 0.5) -> dict[str, Any]:
    """ILSVRC localization and classification errors of ``detections`` (image id ->
    ``ImageDetections``) on ``dataset`` (see the module docstring). Returns fractions in [0, 1]."""
    if guesses < 1:
        raise UserError(f"--guesses must be at least 1 (got {guesses})")
    counts = dict.fromkeys(("top1_loc", "top5_loc", "top1_cls", "top5_cls", "gt_known_loc"), 0)
    n = skipped = 0
    for rec in dataset.records:
        gt, labels = np.asarray(rec.boxes, np.float32).reshape(-1, 4), np.array(rec.labels, object)
        if not len(gt):
            skipped += 1
            continue
        n += 1
        det = detections.get(rec.image_id)
        ranked = np.argsort(-det.scores, kind="stable") if det is not None else []
        order = ranked[:guesses]
        hits = [_correct(det.boxes[i], det.labels[i], gt, labels, iou) for i in order]
        classes = [det.labels[i] in set(rec.labels) for i in order]
        counts["top1_loc"] += not any(hits[:1])
        counts["top5_loc"] += not any(hits)
        counts["top1_cls"] += not any(classes[:1])
        counts["top5_cls"] += not any(classes)
        known = image_class(gt, list(rec.labels))
        mine = [i for i in ranked if det.labels[i] == known]
        counts["gt_known_loc"] += not (mine and _correct(det.boxes[mine[0]], known, gt, labels, iou))
    if n == 0:
        raise UserError("no image of the split has ground-truth objects: nothing to localize")
    out = {f"{k}_error": v / n for k, v in counts.items()}
    return {"metric": "loc", **out, "guesses": int(guesses), "iou": float(iou), "num_images": n,
            "images_without_objects": skipped}
