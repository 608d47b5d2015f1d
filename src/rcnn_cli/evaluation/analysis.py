"""Why a detector fails: TIDE-style error types with their dAP, a confusion matrix, per-class counts.

Error types (Bolya et al., ECCV 2020), for every detection that is not a true positive, with the
foreground IoU ``iou`` (0.5) and the background IoU ``bg_iou`` (0.1), VOC's ``+1`` pixel IoU:

=========  ====================================================================================
``dupe``   IoU >= iou with an object of its class that a higher-scoring detection already matched
``cls``    IoU >= iou with an object of another class
``loc``    bg_iou <= IoU < iou with an object of its class
``both``   bg_iou <= IoU < iou with an object of another class only
``bkg``    IoU < bg_iou with every object
``missed`` an object no detection found, and no ``cls`` or ``loc`` error points at
=========  ====================================================================================

Each type's dAP is the mAP gained when that type alone is fixed by its oracle: ``cls`` takes the
object's class, ``loc`` the object's box (each removed instead if the object is already found),
``dupe``, ``both`` and ``bkg`` detections are removed, ``missed`` objects leave the ground truth.
The mAP is :func:`rcnn_cli.evaluation.evaluate`'s, so the oracles are scored by the same matcher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from rcnn_cli.boxes import voc_iou

__all__ = ["ERROR_TYPES", "ImageErrors", "classify_errors", "error_breakdown", "confusion_matrix",
           "per_class_counts"]

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")


@dataclass
class ImageErrors:
    """One image: each detection's type (``tp``, an error type, or ``ignored`` for a difficult
    object) and the object it points at (-1: none); the indices of the missed objects."""

    types: list[str] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)


def _ious(det_box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    return voc_iou(det_box, gt_boxes) if len(gt_boxes) else np.zeros(0)


def _best(ious: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """``(index, IoU)`` of the best object under ``mask`` (``(-1, 0.0)`` when there is none)."""
    if not mask.any():
        return -1, 0.0
    masked = np.where(mask, ious, -1.0)
    j = int(masked.argmax())
    return j, float(masked[j])


def _image_errors(record, det, iou: float, bg_iou: float) -> ImageErrors:
    gt = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(record.labels, object)
    difficult = np.asarray(record.difficult, bool) if len(record.difficult) == len(gt) else np.zeros(len(gt), bool)
    order = np.argsort(-np.asarray(det.scores), kind="stable")
    out = ImageErrors(["bkg"] * len(det), [-1] * len(det))
    matched, pointed = np.zeros(len(gt), bool), np.zeros(len(gt), bool)
    for d in order:
        ious = _ious(np.asarray(det.boxes[d], np.float64), gt)
        same = labels == det.labels[d]
        j, o = _best(ious, same)
        if o >= iou:
            if difficult[j]:
                out.types[d] = "ignored"
            elif not matched[j]:
                out.types[d], matched[j] = "tp", True
            else:
                out.types[d] = "dupe"
            out.targets[d] = j
            continue
        k, ok = _best(ious, ~same)
        if ok >= iou:
            out.types[d], out.targets[d] = "cls", k
        elif o >= bg_iou:
            out.types[d], out.targets[d] = "loc", j
        elif ok >= bg_iou:
            out.types[d], out.targets[d] = "both", k
        if out.types[d] in ("cls", "loc"):
            pointed[out.targets[d]] = True
    out.missed = [int(j) for j in np.flatnonzero(~matched & ~pointed & ~difficult)]
    return out


def classify_errors(dataset, detections: Mapping[str, Any], iou: float = 0.5, bg_iou: float = 0.1
                    ) -> dict[str, ImageErrors]:
    """:class:`ImageErrors` of every image of ``dataset`` (images without detections: only misses)."""
    from rcnn_cli.boxes import ImageDetections

    return {r.image_id: _image_errors(r, detections.get(r.image_id) or ImageDetections.empty(r.image_id), iou,
                                      bg_iou) for r in dataset.records}


def _fixed(dataset, detections: Mapping[str, Any], errors: dict[str, ImageErrors], kind: str):
    """``(dataset, detections)`` with every error of ``kind`` fixed by its oracle."""
    from rcnn_cli.boxes import ImageDetections

    if kind == "missed":
        ds = copy.copy(dataset)
        ds.records = [_without(r, errors[r.image_id].missed) for r in dataset.records]
        return ds, detections
    fixed = {}
    for r in dataset.records:
        det = detections.get(r.image_id)
        if det is None:
            continue
        e = errors[r.image_id]
        found = {e.targets[d] for d, t in enumerate(e.types) if t == "tp"}
        boxes, labels, keep = np.array(det.boxes, np.float32), list(det.labels), np.ones(len(det), bool)
        for d in np.argsort(-np.asarray(det.scores), kind="stable"):
            if e.types[d] != kind:
                continue
            j = e.targets[d]
            if kind in ("cls", "loc") and j not in found:
                found.add(j)
                if kind == "cls":
                    labels[d] = r.labels[j]
                else:
                    boxes[d] = r.boxes[j]
            else:
                keep[d] = False
        fixed[r.image_id] = ImageDetections(r.image_id, boxes[keep], np.asarray(det.scores)[keep],
                                            [lab for lab, k in zip(labels, keep) if k])
    return dataset, fixed


def _without(record, drop: list[int]):
    if not drop:
        return record
    keep = np.setdiff1d(np.arange(len(record.labels)), drop)
    r = copy.copy(record)
    r.boxes = np.asarray(record.boxes).reshape(-1, 4)[keep]
    r.labels = [record.labels[i] for i in keep]
    r.difficult = [record.difficult[i] for i in keep] if len(record.difficult) == len(record.labels) else []
    return r


def error_breakdown(dataset, detections: Mapping[str, Any], metric: str = "voc12", iou: float = 0.5,
                    bg_iou: float = 0.1) -> dict[str, Any]:
    """``{"mAP", "counts": {type: n}, "dAP": {type: mAP gain}, "errors": {image_id: ImageErrors}}``."""
    from rcnn_cli.evaluation import evaluate

    errors = classify_errors(dataset, detections, iou, bg_iou)
    base = float(evaluate(dataset, detections, metric=metric, iou=iou)["mAP"])
    counts = {t: 0 for t in ERROR_TYPES}
    for e in errors.values():
        for t in e.types:
            if t in counts:
                counts[t] += 1
        counts["missed"] += len(e.missed)
    dap = {}
    for kind in ERROR_TYPES:
        ds, dets = _fixed(dataset, detections, errors, kind)
        dap[kind] = float(evaluate(ds, dets, metric=metric, iou=iou)["mAP"]) - base if counts[kind] else 0.0
    return {"mAP": base, "metric": metric, "iou": iou, "bg_iou": bg_iou, "counts": counts, "dAP": dap,
            "errors": errors}


def _above(detections: Mapping[str, Any], score_threshold: float) -> dict[str, tuple[np.ndarray, np.ndarray, list]]:
    out = {}
    for image_id, det in detections.items():
        keep = np.asarray(det.scores) >= score_threshold
        out[image_id] = (np.asarray(det.boxes, np.float64)[keep], np.asarray(det.scores)[keep],
                         [lab for lab, k in zip(det.labels, keep) if k])
    return out


def confusion_matrix(dataset, detections: Mapping[str, Any], score_threshold: float = 0.3, iou: float = 0.5
                     ) -> dict[str, Any]:
    """Rows: the objects' classes + ``background`` (detections that matched nothing); columns: the
    detections' classes + ``background`` (objects no detection matched). Detections scoring at least
    ``score_threshold`` match, highest score first, the free object of any class they overlap most
    (IoU >= ``iou``); difficult objects are left out."""
    names = list(dataset.classes) + ["background"]
    index = {c: i for i, c in enumerate(names)}
    bg = len(names) - 1
    m = np.zeros((len(names), len(names)), np.int64)
    kept = _above(detections, score_threshold)
    for r in dataset.records:
        gt = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        use = ~np.asarray(r.difficult, bool) if len(r.difficult) == len(gt) else np.ones(len(gt), bool)
        free = use.copy()
        boxes, scores, labels = kept.get(r.image_id, (np.zeros((0, 4)), np.zeros(0), []))
        for d in np.argsort(-scores, kind="stable"):
            j, o = _best(_ious(boxes[d], gt), free)
            if o >= iou:
                free[j] = False
                m[index[r.labels[j]], index[labels[d]]] += 1
            elif labels[d] in index:
                m[bg, index[labels[d]]] += 1
        for j in np.flatnonzero(free):
            m[index[r.labels[j]], bg] += 1
    return {"classes": names, "matrix": m.tolist(), "score_threshold": score_threshold, "iou": iou}


def per_class_counts(dataset, detections: Mapping[str, Any], score_threshold: float = 0.3, iou: float = 0.5
                     ) -> dict[str, dict[str, float]]:
    """Per class at ``score_threshold``: TP, FP, FN, precision, recall (matching as the VOC devkit)."""
    from rcnn_cli.boxes import ImageDetections

    kept = {i: ImageDetections(i, b, s, lab) for i, (b, s, lab) in _above(detections, score_threshold).items()}
    errors = classify_errors(dataset, kept, iou)
    out = {c: {"tp": 0, "fp": 0, "fn": 0} for c in dataset.classes}
    for r in dataset.records:
        e, det = errors[r.image_id], kept.get(r.image_id)
        found = set()
        for d, t in enumerate(e.types):
            if det is None or det.labels[d] not in out or t == "ignored":
                continue
            if t == "tp":
                out[det.labels[d]]["tp"] += 1
                found.add(e.targets[d])
            else:
                out[det.labels[d]]["fp"] += 1
        difficult = r.difficult if len(r.difficult) == len(r.labels) else [False] * len(r.labels)
        for j, lab in enumerate(r.labels):
            if j not in found and not difficult[j] and lab in out:
                out[lab]["fn"] += 1
    for v in out.values():
        v["precision"] = v["tp"] / (v["tp"] + v["fp"]) if v["tp"] + v["fp"] else 0.0
        v["recall"] = v["tp"] / (v["tp"] + v["fn"]) if v["tp"] + v["fn"] else 0.0
    return out
