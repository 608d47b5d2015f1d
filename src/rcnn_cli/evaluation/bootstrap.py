"""How much of a VOC mAP is the test split's luck: a bootstrap over its images.

Each resample draws the split's ``N`` images with replacement (image ``i`` ``w_i`` times) and scores
the same matching again: a detection counts ``w_i`` times in the precision/recall cumsums and an
image's objects ``w_i`` times in ``npos``. This equals evaluating the resampled split with its
copies side by side, since a detection's copies are adjacent in rank and neither AP changes
between them (exactly so without tied scores; on ties the devkit's input order may put other
detections between copies). The interval is the percentile interval of the resampled mAPs (Efron
and Tibshirani 1993, ch. 13); a class with no objects in a resample is left out of its mean, as in
:func:`rcnn_cli.evaluation.evaluate`.

Two detection sets scored on the same resamples (:func:`bootstrap_summary`'s ``against``) give the
interval of their difference: whether a change beats the split's noise.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from rcnn_cli.errors import UserError
from rcnn_cli.evaluation.voc import ClassMatch, voc07_ap, voc12_ap

__all__ = ["resampled_maps", "bootstrap_interval", "bootstrap_summary"]


def _weighted_ap(match: ClassMatch, weights: np.ndarray, metric: str) -> float | None:
    """AP of one class with image ``i`` counted ``weights[i]`` times; ``None`` without objects."""
    npos = float(np.dot(weights, match.npos_per_image))
    if npos == 0:
        return None
    w = weights[match.image].astype(np.float64)
    keep = w > 0
    tp = np.cumsum(w[keep] * match.tp[keep])
    fp = np.cumsum(w[keep] * match.fp[keep])
    with np.errstate(divide="ignore", invalid="ignore"):
        rec, prec = tp / npos, tp / (tp + fp)
    return voc07_ap(rec, prec) if metric == "voc07" else voc12_ap(rec, prec)


def resampled_maps(matches: Mapping[str, ClassMatch], num_images: int, resamples: int, metric: str = "voc12",
                   seed: int = 0) -> np.ndarray:
    """``(resamples,)`` mAPs (fractions) of :func:`rcnn_cli.evaluation.voc.voc_match`'s ``matches``
    over ``num_images`` images, each resample drawn with replacement from ``seed``'s generator."""
    if resamples < 1:
        raise UserError(f"--bootstrap must be a number of resamples >= 1 (got {resamples})")
    if any(m.image is None or m.npos_per_image is None for m in matches.values()):
        raise UserError("the bootstrap needs each detection's image (voc_match's matching)")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, num_images, num_images), minlength=num_images)
        aps = [ap for m in matches.values() if (ap := _weighted_ap(m, weights, metric)) is not None]
        out[b] = np.mean(aps) if aps else 0.0
    return out


def bootstrap_interval(maps: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """``{"low", "high", "std", "level", "resamples"}`` of resampled mAPs (or differences of them):
    the central ``level`` percentile interval and the standard deviation."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(maps, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "std": float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0,
            "level": float(level), "resamples": int(len(maps))}


def bootstrap_summary(matches: Mapping[str, ClassMatch], num_images: int, resamples: int, metric: str = "voc12",
                      seed: int = 0, against: Mapping[str, ClassMatch] | None = None) -> dict[str, Any]:
    """``{"mAP": interval, "seed"}``, with ``against`` (a second detection set's matching on the same
    images) also ``"difference"``: the interval of this mAP minus that one on the same resamples and
    ``better``, the fraction of resamples where this one is higher."""
    maps = resampled_maps(matches, num_images, resamples, metric, seed)
    out: dict[str, Any] = {"mAP": bootstrap_interval(maps), "seed": int(seed)}
    if against is not None:
        diff = maps - resampled_maps(against, num_images, resamples, metric, seed)
        out["difference"] = {**bootstrap_interval(diff), "better": float(np.mean(diff > 0))}
    return out
