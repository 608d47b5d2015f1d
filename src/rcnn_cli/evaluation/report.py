"""``rcnn evaluate --analysis DIR``: the error analysis written as JSON, pictures and one HTML page.

``DIR/analysis.json`` (breakdown, confusion matrix, per-class counts), ``errors.png`` (dAP per error
type), ``confusion.png``, ``worst/<image>.jpg`` (the images with the most errors: ground truth in
green, true positives in blue, errors in red labelled by their type) and ``index.html`` (everything
above on one page, images referenced relative to it).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rcnn_cli.evaluation.analysis import ERROR_TYPES, confusion_matrix, error_breakdown, per_class_counts

__all__ = ["write_analysis"]

GT_COLOR, TP_COLOR, ERROR_COLOR = (60, 180, 75), (0, 130, 200), (230, 25, 75)
_NAMES = {"cls": "classification", "loc": "localization", "both": "cls + loc", "dupe": "duplicate",
          "bkg": "background", "missed": "missed"}


def _plot_dap(breakdown: Mapping[str, Any], path: Path) -> Path:
    from rcnn_cli.visualize import _pyplot, _savefig

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    try:
        values = [100 * breakdown["dAP"][t] for t in ERROR_TYPES]
        bars = ax.bar([_NAMES[t] for t in ERROR_TYPES], values, color=[np.asarray(ERROR_COLOR) / 255] * 6)
        for b, t in zip(bars, ERROR_TYPES):
            ax.annotate(f"{100 * breakdown['dAP'][t]:.1f}\n({breakdown['counts'][t]})",
                        (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("dAP (mAP points gained when fixed)")
        ax.set_title(f"errors of {100 * breakdown['mAP']:.1f} mAP ({breakdown['metric']}, IoU {breakdown['iou']:g})")
        ax.set_ylim(0, max(values + [1.0]) * 1.3)
        ax.tick_params(axis="x", labelsize=8)
        return _savefig(fig, path)
    finally:
        plt.close(fig)


def _plot_confusion(conf: Mapping[str, Any], path: Path) -> Path:
    from rcnn_cli.visualize import _pyplot, _savefig

    plt = _pyplot()
    m, names = np.asarray(conf["matrix"]), conf["classes"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 1.0 + 0.6 * len(names)))
    try:
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("detected as")
        ax.set_ylabel("ground truth")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_title(f"score >= {conf['score_threshold']:g}, IoU >= {conf['iou']:g}")
        return _savefig(fig, path)
    finally:
        plt.close(fig)


def _draw_errors(record, det, errors, path: Path, score_threshold: float) -> Path:
    from rcnn_cli.data.images import load_image
    from rcnn_cli.visualize import draw_boxes, save_image

    gt = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    texts = [f"missed {lab}" if j in errors.missed else lab for j, lab in enumerate(record.labels)]
    colors = [ERROR_COLOR if j in errors.missed else GT_COLOR for j in range(len(gt))]
    boxes = [gt]
    if det is not None:
        shown = [d for d, t in enumerate(errors.types) if t != "ignored" and det.scores[d] >= score_threshold]
        boxes.append(np.asarray(det.boxes, np.float32)[shown].reshape(-1, 4))
        for d in shown:
            t = errors.types[d]
            texts.append(f"{det.labels[d]} {det.scores[d]:.2f}" + ("" if t == "tp" else f" {t}"))
            colors.append(TP_COLOR if t == "tp" else ERROR_COLOR)
    image = draw_boxes(load_image(record.path), np.concatenate(boxes), texts, colors)
    return save_image(image, path)


def _worst(dataset, detections, errors: Mapping[str, Any], n: int, out: Path, score_threshold: float
           ) -> list[dict[str, Any]]:
    """The ``n`` images with the most errors among the detections at ``score_threshold`` and up (and
    misses), drawn."""
    rows = []
    for r in dataset.records:
        e, det = errors[r.image_id], detections.get(r.image_id)
        scores = det.scores if det is not None else []
        count = sum(t in ERROR_TYPES and s >= score_threshold for t, s in zip(e.types, scores)) + len(e.missed)
        if count:
            rows.append({"image_id": r.image_id, "errors": count, "record": r})
    rows.sort(key=lambda x: -x["errors"])
    written = []
    for row in rows[:n]:
        r = row.pop("record")
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.image_id) + ".jpg"
        _draw_errors(r, detections.get(r.image_id), errors[r.image_id], out / "worst" / name, score_threshold)
        written.append(dict(row, image=f"worst/{name}"))
    return written


def _html(report: Mapping[str, Any]) -> str:
    b, conf, per = report["breakdown"], report["confusion"], report["per_class"]
    rows = "".join(f"<tr><td>{_NAMES[t]}</td><td>{b['counts'][t]}</td><td>{100 * b['dAP'][t]:.2f}</td></tr>"
                   for t in ERROR_TYPES)
    cls_rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{v['tp']}</td><td>{v['fp']}</td><td>{v['fn']}</td>"
                       f"<td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td></tr>" for c, v in per.items())
    worst = "".join(f"<figure><img src='{w['image']}' alt='{html.escape(w['image_id'])}'><figcaption>"
                    f"{html.escape(w['image_id'])}: {w['errors']} errors</figcaption></figure>" for w in report["worst"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rcnn error analysis</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:.3em .6em;text-align:right}}figure{{display:inline-block;margin:.5em}}img{{max-width:420px}}</style></head>
<body><h1>Error analysis: mAP {100 * b['mAP']:.2f} ({b['metric']}, IoU {b['iou']:g})</h1>
<h2>Error types (TIDE)</h2><table><tr><th>type</th><th>count</th><th>dAP</th></tr>{rows}</table>
<p><img src="errors.png" alt="dAP per error type"></p>
<h2>Per class at score &ge; {conf['score_threshold']:g}</h2>
<table><tr><th>class</th><th>TP</th><th>FP</th><th>FN</th><th>precision</th><th>recall</th></tr>{cls_rows}</table>
<h2>Confusion matrix</h2><p><img src="confusion.png" alt="confusion matrix"></p>
<h2>Images with the most errors</h2><p>detections scoring &ge; {conf['score_threshold']:g}; green: ground
truth; blue: true positives; red: errors (labelled by type) and misses</p>
{worst}</body></html>
"""


def write_analysis(dataset, detections: Mapping[str, Any], out: str | os.PathLike, metric: str = "voc12",
                   iou: float = 0.5, score_threshold: float = 0.3, worst: int = 8) -> dict[str, Any]:
    """Write the analysis of ``detections`` on ``dataset`` into ``out`` (see the module docstring);
    returns what ``analysis.json`` holds."""
    from rcnn_cli.io import atomic_open, write_json

    out = Path(out)
    (out / "worst").mkdir(parents=True, exist_ok=True)
    breakdown = error_breakdown(dataset, detections, metric=metric, iou=iou)
    errors = breakdown.pop("errors")
    report = {"breakdown": breakdown, "confusion": confusion_matrix(dataset, detections, score_threshold, iou),
              "per_class": per_class_counts(dataset, detections, score_threshold, iou),
              "worst": _worst(dataset, detections, errors, worst, out, score_threshold)}
    _plot_dap(breakdown, out / "errors.png")
    _plot_confusion(report["confusion"], out / "confusion.png")
    write_json(out / "analysis.json", report)
    with atomic_open(out / "index.html") as f:
        f.write(_html(report))
    return report
