"""Overfeat's dense evaluation: FC layers as convolutions, window boxes, scales chosen from the data, greedy
merging."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from torchvision.ops import box_area, box_iou
from rcnn_cli.errors import UserError
from rcnn_cli.models.localizer import Localizer
from rcnn_cli.models.overfeat.config import STRIDE


def dense_heads(model: Localizer, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The localizer's heads at every ``w x w`` window of a trunk map ``(N, C, H, W)`` (``w`` =
    ``input_size / 32``), as convolutions with the FC weights: class logits ``(N, C+1, H-w+1, W-w+1)``
    and normalised boxes ``(N, C', 4, H-w+1, W-w+1)``. At each window they equal
    ``model.heads(fmap[..., i:i+w, j:j+w])``."""
    w = model.rcnn_config.input_size // STRIDE
    if fmap.shape[-2] < w or fmap.shape[-1] < w:
        raise ValueError(f"a feature map of {tuple(fmap.shape[-2:])} holds no {w} x {w} window")
    pooled = F.avg_pool2d(fmap, w, stride=1)
    lin = model.classifier
    logits = F.conv2d(pooled, lin.weight[:, :, None, None], lin.bias)
    fc1, fc2 = model.regressor[0], model.regressor[2]
    if model.reduce is not None:  # attach="conv": FC over the flattened 64 x w x w map = a w x w convolution
        x = F.conv2d(model.reduce(fmap), fc1.weight.view(fc1.out_features, -1, w, w), fc1.bias)
    else:  # attach="fc": FC over the pooled features = a 1x1 convolution of the pooled map
        x = F.conv2d(pooled, fc1.weight[:, :, None, None], fc1.bias)
    boxes = F.conv2d(F.relu(x), fc2.weight[:, :, None, None], fc2.bias)
    n, _, h, ww = boxes.shape
    return logits, boxes.view(n, -1, 4, h, ww)


def window_boxes(rows: int, cols: int, window: int, offset: int = 0) -> torch.Tensor:
    """The ``rows x cols`` windows of a dense pass, row-major ``(rows * cols, 4)`` in pixels of the
    scaled (and ``offset``-shifted) image: window ``(i, j)`` is ``[32 j, 32 i, 32 j + window, 32 i + window]``
    minus the offset."""
    ys, xs = torch.meshgrid(torch.arange(rows) * STRIDE, torch.arange(cols) * STRIDE, indexing="ij")
    x0, y0 = xs.reshape(-1).float() - offset, ys.reshape(-1).float() - offset
    return torch.stack([x0, y0, x0 + window, y0 + window], dim=1)


# --------------------------------------------------------------------------------------------
# Scales from the data


def choose_scales(longest_sides: np.ndarray, image_sides: np.ndarray, window: int, fill: tuple[float, float],
                  max_side: int = 1600, count: int = 3) -> list[float]:
    """Image scale factors so that the training objects' longest sides (pixels) fill the window as in
    training: the 10th and 90th percentiles of ``longest_sides`` map to the middle of ``fill``,
    ``count`` (>= 3) scales spaced geometrically between (at most a factor of 1.5 apart: more scales
    when the objects' sizes spread); none makes the median image's longer side (``image_sides``)
    longer than ``max_side``. Largest scale first."""
    if not len(longest_sides):
        raise UserError("no valid training box to choose Overfeat's scales from")
    mid = window * (fill[0] + fill[1]) / 2
    hi, lo = mid / np.percentile(longest_sides, 10), mid / np.percentile(longest_sides, 90)
    cap = max_side / float(np.median(image_sides))
    hi, lo = min(hi, cap), min(lo, cap)
    n = max(count, 1 + math.ceil(math.log(hi / lo) / math.log(1.5)) if hi > lo else count)
    if hi / lo < 1.5 ** (count - 1):  # objects of one size: spread the scales around it
        centre = math.sqrt(hi * lo)
        hi, lo = min(centre * 1.5 ** ((count - 1) / 2), cap), centre / 1.5 ** ((count - 1) / 2)
    return [round(float(hi * (lo / hi) ** (i / (n - 1))), 4) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Greedy merging (Overfeat, section 4.3)


def match_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Overfeat's match score of boxes ``a (N, 4)`` and ``b (M, 4)``: the distance between their
    centres over their mean size (square root of the area), plus ``1 - IoU``. 0 for equal boxes; the
    lower, the closer. ``(N, M)``."""
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    sa, sb = box_area(a).clamp(min=1e-6).sqrt(), box_area(b).clamp(min=1e-6).sqrt()
    return torch.cdist(ca, cb) / ((sa[:, None] + sb[None]) / 2) + 1 - box_iou(a, b)


def greedy_merge(boxes: torch.Tensor, scores: torch.Tensor, threshold: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overfeat's greedy merge of one class's boxes ``(N, 4)`` with ``scores (N,)``: repeatedly merge
    the pair with the lowest :func:`match_scores` until it exceeds ``threshold``. A merged box is the
    mean of all the boxes merged into it and its score their sum (Overfeat adds the class outputs of
    the windows a box came from). Returns boxes ``(K, 4)``, scores ``(K,)`` and member counts
    ``(K,)``, highest score first."""
    boxes, scores = boxes.double(), scores.double()
    sums, total, count = boxes.clone(), scores.clone(), torch.ones(len(boxes), dtype=torch.long)
    alive = torch.ones(len(boxes), dtype=torch.bool)
    m = match_scores(boxes, boxes)
    m.fill_diagonal_(math.inf)
    while int(alive.sum()) > 1:
        flat = int(torch.argmin(m))
        i, j = divmod(flat, len(boxes))
        if float(m[i, j]) > threshold:
            break
        i, j = min(i, j), max(i, j)
        sums[i] += sums[j]
        total[i] += total[j]
        count[i] += count[j]
        alive[j] = False
        m[j, :] = m[:, j] = math.inf
        row = match_scores((sums[i] / count[i])[None], sums / count[:, None])[0]
        row[~alive] = math.inf
        row[i] = math.inf
        m[i, :] = m[:, i] = row
    idx = torch.nonzero(alive).flatten()
    merged, s, c = (sums[idx] / count[idx, None]).float(), total[idx].float(), count[idx]
    order = torch.argsort(s, descending=True, stable=True)
    return merged[order], s[order], c[order]
