"""Detection evaluation: PASCAL VOC AP (devkit-exact, ``voc07`` 11-point and ``voc12`` area),
COCO AP through pycocotools, and the ILSVRC localization errors (``loc``,
:mod:`rcnn_cli.evaluation.localization`).

``evaluate`` returns fractions (0..1)::

    {"metric": "voc07", "mAP": 0.71, "AP": {"cat": 0.8, ...}, "num_images": n, "num_detections": n,
     "iou": 0.5, "num_objects": {"cat": 12, ...}}

for ``coco`` also ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (and ``per_class_AP50``). A class
with objects but no detections has AP 0; a class without (non-difficult) objects has AP ``None``
and is left out of the mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from rcnn_cli.errors import UserError
from rcnn_cli.evaluation.coco import COCO_KEYS, coco_evaluate
from rcnn_cli.evaluation.voc import ClassMatch, voc07_ap, voc12_ap, voc_ap_from_match, voc_match
from rcnn_cli.log import logger

if TYPE_CHECKING:  # pragma: no cover
    from rcnn_cli.data.dataset import Dataset
    from rcnn_cli.boxes import ImageDetections

__all__ = ["METRICS", "evaluate", "bootstrap_lines", "voc_match", "voc07_ap", "voc12_ap", "ClassMatch",
           "coco_evaluate", "COCO_KEYS", "json_summary", "results_table"]

METRICS = ("voc07", "voc12", "coco", "loc")


def _mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else 0.0


def evaluate(dataset: "Dataset", detections: Mapping[str, "ImageDetections"], metric: str = "voc07",
             iou: float = 0.5, ignore_unknown: bool = False, curves: bool = False, bootstrap: int = 0,
             seed: int = 0, against: Mapping[str, "ImageDetections"] | None = None) -> dict[str, Any]:
    """Evaluate ``detections`` (image id -> :class:`ImageDetections`) against ``dataset``.

    ``metric``: ``voc07`` | ``voc12`` (IoU threshold ``iou``, devkit ``>=``) | ``coco`` (IoU
    0.50:0.95, ``iou`` unused). Detections of images or classes outside the dataset are a
    :class:`UserError`, or a warning with ``ignore_unknown``. ``curves=True`` adds
    ``"curves": {class: (recall, precision)}`` arrays for plotting. ``bootstrap=B`` (VOC metrics)
    adds ``"bootstrap"``: the mAP's 95 % interval over ``B`` resamples of the images
    (:mod:`rcnn_cli.evaluation.bootstrap`); ``against`` (a second detection set) also the interval
    of the difference on the same resamples, and ``"against_mAP"``.
    """
    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import check_known, count_detections

    metric = metric.lower()
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}' (use one of: {', '.join(METRICS)})")
    if not (0.0 < float(iou) <= 1.0):
        raise UserError(f"--iou must be in (0, 1], got {iou}")
    if not dataset.classes:
        raise UserError("the dataset has no classes to evaluate")
    detections = check_known(detections, dataset, ignore_unknown)
    if (bootstrap or against is not None) and metric not in ("voc07", "voc12"):
        raise UserError(f"--bootstrap and --against go with --metric voc07 or voc12, not {metric}")
    if metric == "loc":
        from rcnn_cli.evaluation.localization import localization_errors

        return localization_errors(dataset, detections, iou=float(iou))
    result: dict[str, Any] = {"metric": metric}
    if metric == "coco":
        coco = coco_evaluate(dataset, detections)
        result["mAP"] = coco["mAP"] if coco["mAP"] is not None else 0.0
        result["AP"] = coco["AP"]
        for key in COCO_KEYS[1:]:
            result[key] = coco[key]
        result["per_class_AP50"] = coco["per_class_AP50"]
        curve_data = coco["curves"]
        num_objects = {c: 0 for c in dataset.classes}
        for r in dataset.records:
            for lab, d in zip(r.labels, np.asarray(r.difficult, bool)):
                if lab in num_objects and not d:
                    num_objects[lab] += 1
    else:
        matches = voc_match(dataset, detections, iou=float(iou))
        ap = {c: voc_ap_from_match(m, metric) for c, m in matches.items()}
        result["mAP"] = _mean(list(ap.values()))
        result["AP"] = ap
        result["iou"] = float(iou)
        curve_data = {c: m.precision_recall() for c, m in matches.items()}
        num_objects = {c: m.npos for c, m in matches.items()}
        if bootstrap or against is not None:
            result.update(_bootstrap(dataset, matches, metric, float(iou), bootstrap or 1000, seed, against,
                                     ignore_unknown))
    result["num_images"] = len(dataset.records)
    result["num_detections"] = count_detections(detections)
    result["num_objects"] = num_objects
    per_class = {c: 0 for c in dataset.classes}
    for det in detections.values():
        for lab in det.labels:
            per_class[lab] += 1
    result["detections_per_class"] = per_class
    missing = [c for c, v in result["AP"].items() if v is None]
    if missing:
        logger.warning("class(es) without (non-difficult) objects in this split, left out of mAP: %s", ", ".join(missing))
    if curves:
        result["curves"] = curve_data
    return result


def _bootstrap(dataset, matches, metric: str, iou: float, resamples: int, seed: int, against,
               ignore_unknown: bool) -> dict[str, Any]:
    from rcnn_cli.evaluation.bootstrap import bootstrap_summary
    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import check_known

    out: dict[str, Any] = {}
    other = None
    if against is not None:
        other = voc_match(dataset, check_known(against, dataset, ignore_unknown), iou=iou)
        out["against_mAP"] = _mean([voc_ap_from_match(m, metric) for m in other.values()])
    out["bootstrap"] = bootstrap_summary(matches, len(dataset.records), resamples, metric, seed, other)
    return out


def json_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of an :func:`evaluate` result (drops ``curves``)."""
    return {k: v for k, v in result.items() if k != "curves"}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def results_table(result: Mapping[str, Any], title: str | None = None):
    """A rich ``Table`` of an :func:`evaluate` result: per-class AP in percent, then mAP (and for
    ``coco`` AP50/AP75/APs/APm/APl)."""
    from rich.table import Table

    metric = result["metric"]
    if metric == "loc":
        return _loc_table(result)
    coco = metric == "coco"
    if title is None:
        title = "COCO AP@[.50:.95]" if coco else f"{metric.upper()} AP @ IoU {result.get('iou', 0.5):g}"
    caption = f"{result.get('num_images', 0)} images, {result.get('num_detections', 0)} detections"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("class")
    table.add_column("objects", justify="right")
    table.add_column("detections", justify="right")
    table.add_column("AP (%)", justify="right")
    if coco:
        table.add_column("AP50 (%)", justify="right")
    objects = result.get("num_objects", {})
    dets = result.get("detections_per_class", {})
    for c, v in result["AP"].items():
        row = [c, str(objects.get(c, "")), str(dets.get(c, "")), _pct(v)]
        if coco:
            row.append(_pct(result.get("per_class_AP50", {}).get(c)))
        table.add_row(*row)
    table.add_section()
    total_obj = sum(objects.values()) if objects else ""
    row = ["[bold]mAP[/]", str(total_obj), str(result.get("num_detections", "")), f"[bold]{_pct(result['mAP'])}[/]"]
    if coco:
        row.append(f"[bold]{_pct(result.get('AP50'))}[/]")
    table.add_row(*row)
    if coco:
        for key in ("AP75", "APs", "APm", "APl"):
            table.add_row(key, "", "", _pct(result.get(key)), "")
    return table


def bootstrap_lines(result: Mapping[str, Any]) -> list[str]:
    """The lines that report an :func:`evaluate` result's ``"bootstrap"`` (none without one)."""
    if "bootstrap" not in result:
        return []
    b = result["bootstrap"]
    ci = b["mAP"]
    lines = [f"mAP {_pct(result['mAP'])}, {100 * ci['level']:.0f} % interval over the images "
             f"({ci['resamples']} bootstrap resamples): {_pct(ci['low'])} to {_pct(ci['high'])}"]
    if "difference" in b:
        d = b["difference"]
        lines.append(f"minus --against's mAP {_pct(result['against_mAP'])}: "
                     f"{100 * (result['mAP'] - result['against_mAP']):+.2f}, interval {100 * d['low']:+.2f} to "
                     f"{100 * d['high']:+.2f}; higher in {100 * d['better']:.0f} % of the resamples")
    return lines


def _loc_table(result: Mapping[str, Any]):
    from rich.table import Table

    table = Table(title=f"ILSVRC localization (top-{result['guesses']} guesses, IoU >= {result['iou']:g})",
                  title_justify="left", caption=f"{result['num_images']} images with objects "
                  f"({result['images_without_objects']} without, left out)", caption_justify="left")
    table.add_column("error (%)")
    table.add_column("top-1", justify="right")
    table.add_column(f"top-{result['guesses']}", justify="right")
    table.add_row("localization", _pct(result["top1_loc_error"]), _pct(result["top5_loc_error"]))
    table.add_row("classification", _pct(result["top1_cls_error"]), _pct(result["top5_cls_error"]))
    table.add_row("localization, class known", _pct(result["gt_known_loc_error"]), "")
    return table
