"""PASCAL VOC detection AP exactly as the devkit's ``VOCevaldet.m``, vectorised.

Protocol (per class): detections sorted by descending confidence (MATLAB's stable ``sort``, so
ties keep input order); each is compared with every ground truth of its class in its image and
takes the one with the highest IoU (first on ties; only pairs whose intersection has positive
width and height count, as in the devkit), IoU with ``+1`` pixel widths
(:func:`rcnn_cli.boxes.voc_iou`). With ``IoU >= threshold`` a match to a ``difficult`` object is
neither TP nor FP, the first match to any other object is a TP and later ones are FPs; otherwise
FP. ``npos`` counts the non-difficult objects.

AP: ``voc07`` is the 11-point interpolation with the thresholds MATLAB's ``0:0.1:1`` produces (its
colon operator builds the second half from the end, so the 4th value is 0.30000000000000004
while the 8th is exactly 0.7; ``np.arange(0, 1.1, 0.1)`` differs there). ``voc12`` is the area
under the monotone precision envelope (``VOCap.m``).

Vectorisation: the devkit's sequential loop has a closed form. The object a detection matches
(``jmax``) and its IoU do not depend on the other detections; only "already detected" does, and a
non-difficult object becomes detected exactly at its first matching detection in score order.
So a detection is a TP iff its IoU reaches the threshold, its object is not difficult and it is
the first such detection of that object. All pairs (detection, object of its class in its
image) are scored in one flat array with segment reductions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from rcnn_cli.boxes import voc_iou

if TYPE_CHECKING:  # pragma: no cover
    from rcnn_cli.data.dataset import Dataset
    from rcnn_cli.boxes import ImageDetections

__all__ = ["VOC07_THRESHOLDS", "voc07_ap", "voc12_ap", "ClassMatch", "voc_match", "voc_ap_from_match"]


def _matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """``start:step:stop`` as MATLAB computes it: first half ``start + k*step``, second half ``stop - k*step``."""
    n = int(np.floor((stop - start) / step + 1e-10))
    out = np.empty(n + 1)
    half = n // 2
    for k in range(half + 1):
        out[k] = start + k * step
    for k in range(n - half):
        out[n - k] = (start + n * step) - k * step
    return out


#: The 11 recall thresholds of VOC2007's AP, bit-identical to MATLAB's ``0:0.1:1``.
VOC07_THRESHOLDS = _matlab_colon(0.0, 0.1, 1.0)


def voc07_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """11-point interpolated AP: mean over ``t`` of ``max(prec[rec >= t])`` (0 when empty).

    NaN precisions (only difficult matches so far: 0/0) are ignored as MATLAB's ``max`` does; if
    nothing else is left the point counts 0 (MATLAB would give NaN).
    """
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    if len(rec) == 0:
        return 0.0
    # max(prec[rec >= t]) for all t at once: suffix maxima of prec, read at the first rec >= t
    # (rec is non-decreasing).
    p = np.where(np.isnan(prec), -np.inf, prec)
    suffix = np.maximum.accumulate(p[::-1])[::-1]
    first = np.searchsorted(rec, VOC07_THRESHOLDS, side="left")
    vals = np.zeros(len(VOC07_THRESHOLDS))
    ok = first < len(rec)
    vals[ok] = suffix[first[ok]]
    vals[~np.isfinite(vals)] = 0.0
    ap = 0.0
    for v in vals:  # sequential sum, as the devkit adds p/11 term by term
        ap = ap + v / 11
    return float(ap)


def voc12_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the monotone precision envelope (``VOCap.m``); NaN precisions are ignored."""
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]  # fmax ignores NaN, like MATLAB's max
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


@dataclass
class ClassMatch:
    """Matching result of one class, detections in rank order (descending score).

    ``tp``/``fp`` are 0/1 per detection (both 0 for a match to a difficult object); ``npos`` is the
    number of non-difficult objects. ``image``: each detection's image (index into the dataset's
    records) and ``npos_per_image`` ``(num_images,)`` the non-difficult objects of each image, for
    resampling images (:mod:`rcnn_cli.evaluation.bootstrap`); ``None`` where unknown.
    """

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    npos: int
    image: np.ndarray | None = None
    npos_per_image: np.ndarray | None = None

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """``(recall, precision)`` after each detection (the devkit's ``rec`` and ``prec``)."""
        tp = np.cumsum(self.tp, dtype=np.float64)
        fp = np.cumsum(self.fp, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / self.npos if self.npos > 0 else np.full_like(tp, np.nan)
            prec = tp / (fp + tp)
        return rec, prec


def _gather(dataset: "Dataset", detections: Mapping[str, "ImageDetections"]):
    """Flat arrays of ground truth and detections with integer image and class indices."""
    class_index = {c: k for k, c in enumerate(dataset.classes)}
    image_index = {r.image_id: i for i, r in enumerate(dataset.records)}
    K = len(dataset.classes)

    g_boxes, g_img, g_cls, g_diff = [], [], [], []
    for i, r in enumerate(dataset.records):
        n = len(r.labels)
        if n == 0:
            continue
        cls = np.fromiter((class_index.get(lab, -1) for lab in r.labels), np.int64, n)
        diff = np.asarray(r.difficult, bool).reshape(-1)
        if len(diff) != n:
            diff = np.zeros(n, bool)
        keep = cls >= 0
        g_boxes.append(np.asarray(r.boxes, np.float64).reshape(-1, 4)[keep])
        g_img.append(np.full(int(keep.sum()), i, np.int64))
        g_cls.append(cls[keep])
        g_diff.append(diff[keep])
    gt_boxes = np.concatenate(g_boxes) if g_boxes else np.zeros((0, 4))
    gt_img = np.concatenate(g_img) if g_img else np.zeros(0, np.int64)
    gt_cls = np.concatenate(g_cls) if g_cls else np.zeros(0, np.int64)
    gt_diff = np.concatenate(g_diff) if g_diff else np.zeros(0, bool)

    d_boxes, d_scores, d_img, d_cls, d_order = [], [], [], [], []
    have_order = True
    for image_id, det in detections.items():
        n = len(det)
        if n == 0 or image_id not in image_index:
            continue
        cls = np.fromiter((class_index.get(lab, -1) for lab in det.labels), np.int64, n)
        boxes = np.asarray(det.boxes).reshape(-1, 4)
        scores = np.asarray(det.scores).reshape(-1)
        order = getattr(det, "order", None)
        keep = cls >= 0
        if not keep.all():
            cls, boxes, scores = cls[keep], boxes[keep], scores[keep]
            order = order[keep] if order is not None else None
        if order is None:
            have_order = False
        else:
            d_order.append(order)
        d_boxes.append(boxes)
        d_scores.append(scores)
        d_img.append(np.full(len(cls), image_index[image_id], np.int64))
        d_cls.append(cls)
    det_boxes = np.concatenate(d_boxes).astype(np.float64) if d_boxes else np.zeros((0, 4))
    det_scores = np.concatenate(d_scores).astype(np.float64) if d_scores else np.zeros(0)
    det_img = np.concatenate(d_img) if d_img else np.zeros(0, np.int64)
    det_cls = np.concatenate(d_cls) if d_cls else np.zeros(0, np.int64)
    # Input order (ties in score keep it): the readers' source positions when every image has
    # them, else the order of ``detections``.
    det_order = np.concatenate(d_order) if (have_order and d_order) else np.arange(len(det_scores))
    return K, len(dataset.records), (gt_boxes, gt_img, gt_cls, gt_diff), (det_boxes, det_scores, det_img, det_cls, det_order)


def voc_match(dataset: "Dataset", detections: Mapping[str, "ImageDetections"], iou: float = 0.5,
              chunk: int = 1 << 21) -> dict[str, ClassMatch]:
    """Match detections to ground truth for every class (see the module docstring).

    Detections of images or classes outside ``dataset`` are ignored here (check them first with
    :func:`rcnn_cli.io.detections.check_known`). ``chunk`` bounds the number of (detection, object)
    pairs scored at once.
    """
    K, n_images, gt, det = _gather(dataset, detections)
    gt_boxes, gt_img, gt_cls, gt_diff = gt
    det_boxes, det_scores, det_img, det_cls, det_order = det

    # Ground truth grouped by (class, image), annotation order kept inside a group.
    npos = np.bincount(gt_cls[~gt_diff], minlength=K)
    per_image = np.bincount(gt_cls[~gt_diff] * n_images + gt_img[~gt_diff], minlength=K * n_images).reshape(K, n_images)
    gt_key = gt_cls * n_images + gt_img
    g_order = np.argsort(gt_key, kind="stable")
    gt_key, gt_boxes, gt_diff = gt_key[g_order], gt_boxes[g_order], gt_diff[g_order]

    # Detections in rank order: by class, then descending score; stable (MATLAB sort) for ties.
    order = np.argsort(det_order, kind="stable")
    order = order[np.argsort(-det_scores[order], kind="stable")]
    order = order[np.argsort(det_cls[order], kind="stable")]
    det_boxes, det_scores, det_img, det_cls = det_boxes[order], det_scores[order], det_img[order], det_cls[order]
    D = len(det_scores)

    # The objects each detection competes for: the segment of its (class, image) group.
    d_key = det_cls * n_images + det_img
    start = np.searchsorted(gt_key, d_key, side="left")
    count = np.searchsorted(gt_key, d_key, side="right") - start

    jmax = np.full(D, -1, np.int64)
    ovmax = np.full(D, -np.inf)
    has = np.flatnonzero(count > 0)
    # Process in chunks of detections so the pair arrays stay bounded.
    cum = np.cumsum(count[has])
    bounds = [0]
    while bounds[-1] < len(has):
        base = cum[bounds[-1] - 1] if bounds[-1] > 0 else 0
        bounds.append(max(int(np.searchsorted(cum, base + chunk, side="right")), bounds[-1] + 1))
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = has[a:b]
        cnt = count[idx]
        seg_start = np.concatenate(([0], np.cumsum(cnt)[:-1]))
        total = int(cnt.sum())
        pair_det = np.repeat(np.arange(len(idx)), cnt)
        pair_gt = np.repeat(start[idx] - seg_start, cnt) + np.arange(total)
        with np.errstate(divide="ignore", invalid="ignore"):
            # voc_iou broadcasts its box's coordinates: a (4, P) "box" against (P, 4) objects
            # gives the P pairwise IoUs.
            ov = voc_iou(det_boxes[idx][pair_det].T, gt_boxes[pair_gt])
        # The devkit only scores pairs whose intersection has positive width and height; for
        # those IoU > 0, and IoU > 0 implies them (so this mask is exact, NaN included).
        ov = np.where(ov > 0, ov, -np.inf)
        seg_max = np.maximum.reduceat(ov, seg_start)
        is_max = (ov == seg_max[pair_det]) & np.isfinite(ov)
        pos = np.where(is_max, np.arange(total), total)
        first = np.minimum.reduceat(pos, seg_start)
        found = first < total
        jmax[idx[found]] = pair_gt[first[found]]
        ovmax[idx] = seg_max

    valid = ovmax >= iou
    diff = np.zeros(D, bool)
    diff[valid] = gt_diff[jmax[valid]]
    cand = np.flatnonzero(valid & ~diff)
    tp = np.zeros(D, np.float64)
    if len(cand):
        _, first_idx = np.unique(jmax[cand], return_index=True)
        tp[cand[first_idx]] = 1.0
    fp = 1.0 - tp - diff.astype(np.float64)

    out: dict[str, ClassMatch] = {}
    cls_start = np.searchsorted(det_cls, np.arange(K), side="left")
    cls_end = np.searchsorted(det_cls, np.arange(K), side="right")
    for k, c in enumerate(dataset.classes):
        s, e = cls_start[k], cls_end[k]
        out[c] = ClassMatch(scores=det_scores[s:e], tp=tp[s:e], fp=fp[s:e], npos=int(npos[k]), image=det_img[s:e],
                            npos_per_image=per_image[k])
    return out


def voc_ap_from_match(match: ClassMatch, metric: str = "voc07") -> float | None:
    """AP of one class from its matching; ``None`` when the class has no non-difficult object."""
    if match.npos == 0:
        return None
    rec, prec = match.precision_recall()
    return voc07_ap(rec, prec) if metric == "voc07" else voc12_ap(rec, prec)
