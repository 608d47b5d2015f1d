"""Proposal recall: how many ground-truth boxes the proposals cover (recall at IoU thresholds, ABO,
MABO, average recall over IoU 0.5-0.95, recall against the number of proposals kept) and its plots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rcnn_cli.proposals import ProposalReader, load

__all__ = ["recall_stats", "plot_recall"]

_AR_IOUS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def _count_grid(max_boxes: int) -> list[int]:
    base = [1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000]
    grid = [k for k in base if k < max_boxes] + [max(1, max_boxes)]
    return sorted(set(grid))


def recall_stats(dataset, proposals: "ProposalReader | str | os.PathLike", thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Recall of ground truth by proposals on a labelled ``dataset`` (:class:`rcnn_cli.data.Dataset`).

    Ground truth: every box of the split (difficult ones included) except zero-area or inverted
    ones. IoU is continuous (:func:`rcnn_cli.boxes.iou_matrix`). A ground-truth box is recalled at
    ``t`` when some proposal has IoU >= ``t`` with it. ``abo`` = mean best overlap over all boxes;
    ``mabo`` = mean over classes of the per-class ABO (Uijlings et al.); ``average_recall`` = mean
    recall over IoU 0.5:0.05:0.95 (Hosang et al.). Images missing from the file count as zero
    recall (``missing_images``). ``curve`` gives recall against the number of proposals kept
    (the top-k of each image).
    """
    from rcnn_cli.boxes import iou_matrix

    reader = proposals if isinstance(proposals, ProposalReader) else load(proposals)
    own = reader is not proposals
    try:
        best_all: list[np.ndarray] = []      # per gt: best overlap at all proposals
        cum_rows: list[np.ndarray] = []      # per image: (G, len(grid)) best overlap at top-k
        labels: list[str] = []
        nboxes: list[int] = []
        missing = 0
        per_image = []
        for rec in dataset.records:
            gt = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
            keep = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
            gt = gt[keep]
            names = [n for n, k in zip(rec.labels, keep) if k]
            if rec.image_id in reader:
                boxes = reader.boxes(rec.image_id)
            else:
                missing += 1
                boxes = np.zeros((0, 4), np.float32)
            nboxes.append(len(boxes))
            per_image.append((gt, names, boxes))
        grid = _count_grid(max(nboxes) if nboxes else 1)
        for gt, names, boxes in per_image:
            if not len(gt):
                continue
            if len(boxes):
                cum = np.maximum.accumulate(iou_matrix(gt, boxes), axis=1)  # (G, N)
                idx = np.minimum(np.asarray(grid), len(boxes)) - 1
                cum_rows.append(cum[:, idx])
                best_all.append(cum[:, -1])
            else:
                cum_rows.append(np.zeros((len(gt), len(grid)), np.float32))
                best_all.append(np.zeros(len(gt), np.float32))
            labels += names
        best = np.concatenate(best_all) if best_all else np.zeros(0, np.float32)
        at_k = np.concatenate(cum_rows) if cum_rows else np.zeros((0, len(grid)), np.float32)
        labels_arr = np.asarray(labels, dtype=object)

        def rec_at(b: np.ndarray, t: float) -> float:
            return float(np.mean(b >= t - 1e-9)) if len(b) else 0.0

        out: dict[str, Any] = {}
        for t in thresholds:
            out[f"recall@{t:g}"] = rec_at(best, t)
        per_class = {}
        for c in dataset.classes:
            b = best[labels_arr == c] if len(best) else best
            if not len(b):
                continue
            per_class[c] = {**{f"recall@{t:g}": rec_at(b, t) for t in thresholds},
                            "abo": float(b.mean()), "num_gt": int(len(b))}
        out["mabo"] = float(np.mean([v["abo"] for v in per_class.values()])) if per_class else 0.0
        out["abo"] = float(best.mean()) if len(best) else 0.0
        out["average_recall"] = float(np.mean([rec_at(best, t) for t in _AR_IOUS]))
        out["boxes_per_image"] = float(np.mean(nboxes)) if nboxes else 0.0
        out["num_images"] = len(dataset.records)
        out["num_gt"] = int(len(best))
        out["missing_images"] = int(missing)
        out["per_class"] = per_class
        out["curve"] = {"num_proposals": grid,
                        **{f"recall@{t:g}": [rec_at(at_k[:, j], t) for j in range(len(grid))] for t in thresholds},
                        "average_recall": [float(np.mean([rec_at(at_k[:, j], t) for t in _AR_IOUS])) for j in range(len(grid))]}
        ious = np.round(np.arange(0.5, 1.0001, 0.025), 3)
        out["recall_vs_iou"] = {"iou": ious.tolist(), "recall": [rec_at(best, t) for t in ious]}
        out["proposals"] = str(reader.path)
        out["method"] = reader.attrs.get("method")
        out["mode"] = reader.attrs.get("mode")
        return out
    finally:
        if own:
            reader.close()


def plot_recall(stats: dict, out_dir: str | os.PathLike, name: str = "") -> list[Path]:
    """Write ``recall_vs_proposals.png`` (recall@0.5, @0.7 and AR against the number of proposals,
    log x) and ``recall_vs_iou.png`` into ``out_dir``; returns the paths."""
    from rcnn_cli.visualize import plot_lines

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = stats["curve"]
    x = np.asarray(c["num_proposals"], np.float64)
    curves = {k.replace("recall@", "IoU "): (x, np.asarray(v)) for k, v in c.items() if k.startswith("recall@")}
    curves["average recall (0.5:0.95)"] = (x, np.asarray(c["average_recall"]))
    title = f"{stats.get('method', '')} {stats.get('mode') or ''}".strip()
    title = f"{name}: {title}" if name else title
    p1 = plot_lines(curves, out_dir / "recall_vs_proposals.png", "proposals per image", "recall",
                    f"recall vs number of proposals ({title})", logx=True)
    r = stats["recall_vs_iou"]
    p2 = plot_lines({f"all proposals ({stats['boxes_per_image']:.0f}/image)": (np.asarray(r["iou"]), np.asarray(r["recall"]))},
                    out_dir / "recall_vs_iou.png", "IoU threshold", "recall", f"recall vs IoU ({title})")
    return [Path(p1 or out_dir / "recall_vs_proposals.png"), Path(p2 or out_dir / "recall_vs_iou.png")]
