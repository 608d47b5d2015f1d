"""YOLO v1's targets, loss and decoding (tensors in, tensors out), and the grid's ceiling on a dataset."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def cell_boxes(params: torch.Tensor) -> torch.Tensor:
    """``(..., S, S, B, 4)`` ``x, y, sqrt(w), sqrt(h)`` -> normalised ``x1, y1, x2, y2`` boxes."""
    s = params.shape[-3]
    cols = torch.arange(s, dtype=params.dtype, device=params.device).view(1, s, 1)
    rows = torch.arange(s, dtype=params.dtype, device=params.device).view(s, 1, 1)
    cx, cy = (cols + params[..., 0]) / s, (rows + params[..., 1]) / s
    w, h = params[..., 2] ** 2, params[..., 3] ** 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def assign_cells(boxes: torch.Tensor, grid: int, boxes_per_cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell of each normalised ``(M, 4)`` box: ``(row, col)`` of its centre, ``(M,)`` each, and
    ``kept`` ``(M,)`` bool: whether the box is among the ``boxes_per_cell`` largest of its cell (what
    the grid can represent at all)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx * grid).floor().clamp(0, grid - 1).long()
    row = (cy * grid).floor().clamp(0, grid - 1).long()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cell = row * grid + col
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for c in cell.unique():
        members = torch.nonzero(cell == c).flatten()
        order = members[torch.argsort(area[members], descending=True, stable=True)]
        kept[order[:boxes_per_cell]] = True
    return torch.stack([row, col]), kept


def build_targets(pred_boxes: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int
                  ) -> dict[str, torch.Tensor]:
    """Targets of one image. ``pred_boxes``: ``(S, S, B, 4)`` the current predictions (normalised
    ``x1, y1, x2, y2``); ``boxes`` ``(M, 4)`` normalised ground truth, ``labels`` ``(M,)`` in ``0..C-1``.

    Returns ``obj`` ``(S, S, B)`` bool (responsible predictors), ``params`` ``(S, S, B, 4)`` (their
    ``x, y, sqrt(w), sqrt(h)`` targets), ``iou`` ``(S, S, B)`` (confidence targets), ``cls``
    ``(S, S, C)`` and ``cell`` ``(S, S)`` bool (cells holding an object).
    """
    from torchvision.ops import box_iou

    s, b = pred_boxes.shape[0], pred_boxes.shape[2]
    dev = pred_boxes.device
    out = {"obj": torch.zeros(s, s, b, dtype=torch.bool, device=dev), "params": torch.zeros(s, s, b, 4, device=dev),
           "iou": torch.zeros(s, s, b, device=dev), "cls": torch.zeros(s, s, num_classes, device=dev),
           "cell": torch.zeros(s, s, dtype=torch.bool, device=dev)}
    if len(boxes) == 0:
        return out
    (rows, cols), kept = assign_cells(boxes, s, b)
    for r, c in {(int(r), int(c)) for r, c, k in zip(rows, cols, kept) if k}:
        members = torch.nonzero((rows == r) & (cols == c) & kept).flatten()
        ious = box_iou(pred_boxes[r, c], boxes[members])  # (B, k)
        free_pred, free_obj = set(range(b)), set(members.tolist())
        for flat in torch.argsort(ious.flatten(), descending=True, stable=True).tolist():
            p, m = divmod(flat, len(members))
            obj = int(members[m])
            if p in free_pred and obj in free_obj:
                free_pred.discard(p), free_obj.discard(obj)
                out["obj"][r, c, p] = True
                out["iou"][r, c, p] = ious[p, m]
                out["params"][r, c, p] = _box_params(boxes[obj], r, c, s)
        out["cell"][r, c] = True
        out["cls"][r, c] = F.one_hot(labels[members], num_classes).float().mean(0)
    return out


def _box_params(box: torch.Tensor, row: int, col: int, grid: int) -> torch.Tensor:
    """A normalised box as its cell's ``x, y, sqrt(w), sqrt(h)`` target."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = (box[2] - box[0]).clamp(min=0), (box[3] - box[1]).clamp(min=0)
    return torch.stack([cx * grid - col, cy * grid - row, w.sqrt(), h.sqrt()])


def split_output(out: torch.Tensor, boxes_per_cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, S, S, 5B + C)`` activated output -> box params ``(N, S, S, B, 4)``, confidences
    ``(N, S, S, B)``, class probabilities ``(N, S, S, C)``."""
    n, s = out.shape[0], out.shape[1]
    boxes = out[..., : 5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    return boxes[..., :4], boxes[..., 4], out[..., 5 * boxes_per_cell:]


def yolo_loss(out: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], boxes_per_cell: int,
              lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> dict[str, torch.Tensor]:
    """The paper's five sum-squared terms, each summed over the grid and averaged over the batch.

    ``out``: ``(N, S, S, 5B + C)`` activated; ``targets``: one :func:`build_targets` dict per image.
    """
    params, conf, probs = split_output(out, boxes_per_cell)
    t = {k: torch.stack([d[k] for d in targets]) for k in targets[0]}
    obj, n = t["obj"].float(), out.shape[0]
    xy = ((params[..., :2] - t["params"][..., :2]) ** 2).sum(-1)
    wh = ((params[..., 2:] - t["params"][..., 2:]) ** 2).sum(-1)
    return {
        "loss_xy": lambda_coord * (obj * xy).sum() / n,
        "loss_wh": lambda_coord * (obj * wh).sum() / n,
        "loss_obj": (obj * (conf - t["iou"]) ** 2).sum() / n,
        "loss_noobj": lambda_noobj * ((1 - obj) * conf ** 2).sum() / n,
        "loss_class": (t["cell"].float().unsqueeze(-1) * (probs - t["cls"]) ** 2).sum() / n,
    }


def decode_output(out: torch.Tensor, boxes_per_cell: int, width: float, height: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's activated output ``(S, S, 5B + C)`` -> boxes ``(S*S*B, 4)`` in pixels of a
    ``width x height`` image and class-specific confidences ``(S*S*B, C)`` = ``Pr(class | object) x
    confidence``."""
    params, conf, probs = split_output(out.unsqueeze(0), boxes_per_cell)
    boxes = cell_boxes(params[0]) * torch.tensor([width, height, width, height], dtype=out.dtype, device=out.device)
    scores = conf[0].unsqueeze(-1) * probs[0].unsqueeze(-2)  # (S, S, B, C)
    return boxes.reshape(-1, 4), scores.reshape(-1, probs.shape[-1])


def grid_ceiling(dataset, grids: Sequence[int], boxes_per_cell: Sequence[int]) -> list[dict[str, Any]]:
    """The share of valid ground-truth boxes a grid can represent (at most ``B`` objects per cell),
    for every ``(S, B)``: rows ``{"grid", "boxes_per_cell", "total": share, "per_class": {name: share},
    "boxes": count}``. Shares in ``[0, 1]``; the same rule as training (:func:`assign_cells`)."""
    from rcnn_cli.boxes import valid_box_mask

    per_image = []
    for rec in dataset.records:
        if not rec.width or not rec.height:
            continue
        boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        labels = np.array(rec.labels, object)
        keep = valid_box_mask(boxes, rec.width, rec.height)
        if keep.any():
            norm = np.clip(boxes[keep] / np.array([rec.width, rec.height] * 2, np.float32), 0, 1)
            per_image.append((torch.from_numpy(norm), labels[keep]))
    rows = []
    for s in grids:
        for b in boxes_per_cell:
            kept = [(assign_cells(bx, int(s), int(b))[1].numpy(), lb) for bx, lb in per_image]
            total = sum(len(k) for k, _ in kept)
            per_class = {}
            for name in dataset.classes:
                n = sum(int((lb == name).sum()) for _, lb in kept)
                per_class[name] = (sum(int(k[lb == name].sum()) for k, lb in kept) / n) if n else math.nan
            rows.append({"grid": int(s), "boxes_per_cell": int(b), "boxes": total,
                         "total": (sum(int(k.sum()) for k, _ in kept) / total) if total else math.nan,
                         "per_class": per_class})
    return rows
