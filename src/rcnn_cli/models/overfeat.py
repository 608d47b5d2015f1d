"""Overfeat (Sermanet et al. 2014): a window classifier + box regressor applied densely, ``rcnn overfeat``.

The network is :class:`rcnn_cli.models.localizer.Localizer` (the lecture's classification +
localization) with a background class, trained on square windows cut from the training images:

- a **positive** window holds one object whose longest side fills ``fill`` (0.4-0.9) of the window's
  side, its centre moved by up to ``jitter`` (1/8) of the side; targets: the object's class and its
  box in the window's normalised coordinates;
- a **negative** window (background, no box) has a side that one of the test ``scales`` gives and
  matches no object (no object with half of its area inside and a fill within 3/4 of ``fill``'s range).

At test time the fully connected heads become convolutions (:func:`dense_heads`): the classifier over
the window's mean-pooled features is a ``w x w`` average pool and a 1x1 convolution with the FC
weights; the regressor's first FC layer over the flattened ``64 x w x w`` map is a ``w x w``
convolution with those weights, its second a 1x1 convolution. One forward pass over an image scaled
by ``s`` then gives every window of ``input_size`` pixels at a stride of 32 pixels (a 224-pixel
window on a 256-pixel image: 2 x 2 windows). Several ``scales`` (chosen from the training boxes
when not given: :func:`choose_scales`) and input ``offsets`` (shifts of the image, in pixels, for a
finer stride) are run; each window's class probabilities above the score threshold give a
candidate box per class, in pixels of the original image. Candidates are merged per class by
:func:`greedy_merge` (Overfeat's section 4.3, ``merge="greedy"``) or by NMS (``merge="nms"``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from torchvision.ops import box_area, box_iou
from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.method import CompareEntry, Method
from rcnn_cli.models.localizer import Localizer, LocalizerConfig

__all__ = ["OverfeatConfig", "dense_heads", "window_boxes", "choose_scales", "greedy_merge", "match_scores",
           "WindowDataset", "OverfeatDetector", "train_overfeat", "TRAIN_DEFAULTS"]

#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "overfeat"
TRAIN_DEFAULTS = {"epochs": 8, "batch_size": 4, "lr": 0.002, "weight_decay": 1e-4, "warmup_iters": 20}
STRIDE = 32


@dataclass
class OverfeatConfig(LocalizerConfig):
    """A localizer with a background class, applied densely (the run's ``model`` record)."""

    kind: str = NAME
    attach: str = "conv"
    boxes: str = "specific"     # Overfeat's regressor is class-specific
    background: bool = True
    scales: list[float] = field(default_factory=list)  # image scale factors; [] until chosen from the data
    offsets: list[int] = field(default_factory=lambda: [0])  # image shifts in pixels, each < 32
    merge: str = "greedy"       # "greedy" (Overfeat) or "nms"
    merge_threshold: float = 0.5  # greedy merging stops when the best pair's match score exceeds it
    fill: tuple[float, float] = (0.4, 0.9)  # an object's longest side / the side of its training window
    jitter: float = 0.125       # a positive window's centre moves by up to this fraction of its side
    positives: int = 2          # positive windows per image per epoch
    negatives: int = 2          # negative windows per image per epoch
    max_side: int = 1600        # no scale makes an image's longer side longer than this

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fill = tuple(float(f) for f in self.fill)
        self.scales, self.offsets = [float(s) for s in self.scales], [int(o) for o in self.offsets]
        if self.k != 1 or not self.background:
            raise UserError("Overfeat predicts one box per window (k=1) with a background class")
        if self.merge not in ("greedy", "nms"):
            raise UserError(f"--merge must be greedy or nms (got '{self.merge}')")
        if any(s <= 0 for s in self.scales) or any(not 0 <= o < STRIDE for o in self.offsets) or not self.offsets:
            raise UserError(f"--scales must be > 0 and --offsets in 0..{STRIDE - 1} pixels "
                            f"(got {self.scales}, {self.offsets})")
        if not 0 < self.fill[0] < self.fill[1] <= 1.0 or self.positives < 1 or self.negatives < 0:
            raise UserError(f"fill must be 0 < lo < hi <= 1 and positives >= 1 (got {self.fill}, {self.positives})")


# --------------------------------------------------------------------------------------------
# FC layers as convolutions


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


# --------------------------------------------------------------------------------------------
# Training windows


def _matches(window: torch.Tensor, boxes: torch.Tensor, fill: tuple[float, float]) -> torch.Tensor:
    """Which ``boxes (N, 4)`` a square ``window (4,)`` matches: half of the box's area inside and its
    longest side within 3/4 of ``fill``'s range of the window's side. ``(N,)`` bool."""
    side = float(window[2] - window[0])
    inter_w = (torch.minimum(boxes[:, 2], window[2]) - torch.maximum(boxes[:, 0], window[0])).clamp(min=0)
    inter_h = (torch.minimum(boxes[:, 3], window[3]) - torch.maximum(boxes[:, 1], window[1])).clamp(min=0)
    area = box_area(boxes).clamp(min=1e-6)
    longest = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side
    return (inter_w * inter_h / area >= 0.5) & (longest >= 0.75 * fill[0]) & (longest <= fill[1] / 0.75)


def sample_windows(boxes: torch.Tensor, labels: torch.Tensor, width: int, height: int, cfg: OverfeatConfig,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training windows of one image (boxes in pixels, ``labels`` ``0..C-1``): squares ``(W, 4)``
    in pixels, labels ``(W,)`` (``C`` for background) and the object boxes in each window's
    normalised coordinates ``(W, 4)`` (zeros for background). See the module docstring."""
    c, windows, wl, wb = len(cfg.classes), [], [], []
    u = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    for k in torch.randperm(len(boxes), generator=gen)[: cfg.positives].tolist():
        b = boxes[k]
        side = float(torch.maximum(b[2] - b[0], b[3] - b[1])) / (cfg.fill[0] + u() * (cfg.fill[1] - cfg.fill[0]))
        cx = float(b[0] + b[2]) / 2 + (2 * u() - 1) * cfg.jitter * side
        cy = float(b[1] + b[3]) / 2 + (2 * u() - 1) * cfg.jitter * side
        win = torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        windows.append(win), wl.append(int(labels[k])), wb.append((b - win[[0, 1, 0, 1]]) / side)
    sides = [cfg.input_size / s for s in cfg.scales] or [float(min(width, height))]
    for _ in range(cfg.negatives):
        for _attempt in range(10):
            side = min(sides[int(u() * len(sides)) % len(sides)], float(min(width, height)))
            x0, y0 = u() * (width - side), u() * (height - side)
            win = torch.tensor([x0, y0, x0 + side, y0 + side])
            if not len(boxes) or not bool(_matches(win, boxes, cfg.fill).any()):
                windows.append(win), wl.append(c), wb.append(torch.zeros(4))
                break
    return torch.stack(windows), torch.tensor(wl), torch.stack(wb)


def crop_windows(image: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``windows (W, 4)`` (pixels) of ``image (3, H, W)`` resized to ``size``: ``(W, 3, size,
    size)``, black outside the image (as the dense pass pads)."""
    from torchvision.ops import roi_align

    return roi_align(image[None].float(), [windows.float()], output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


class WindowDataset(torch.utils.data.Dataset):
    """Items ``(windows (W, 3, S, S), targets)`` of one training image, ``targets`` a list of
    ``{"loc_boxes": (1, 4), "loc_labels": (1,)}`` per window; windows drawn anew each epoch from
    ``(seed, epoch, index)`` (so a resumed run draws the same). Images without objects are left out
    (with a warning)."""

    def __init__(self, dataset, cfg: OverfeatConfig, seed: int = 0) -> None:
        from rcnn_cli.engine.dataset import DetectionDataset

        empty = [r.image_id for r in dataset.records if not len(r.boxes)]
        if empty:
            logger.warning("%d image(s) without objects left out of Overfeat training (e.g. %s)", len(empty), empty[0])
        kept = [r for r in dataset.records if len(r.boxes)]
        if not kept:
            raise UserError("no image of the split has an object to train Overfeat on")
        self.base = DetectionDataset(type(dataset)(dataset.root, dataset.split, dataset.classes, kept), seed=seed)
        self.cfg, self.seed = cfg, int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        gen = torch.Generator().manual_seed(hash((self.seed, self.base.epoch, index)) % 2**63)
        h, w = image.shape[-2:]
        windows, labels, boxes = sample_windows(target["boxes"], target["labels"] - 1, w, h, self.cfg, gen)
        crops = crop_windows(image, windows, self.cfg.input_size)
        return crops, [{"loc_boxes": b[None], "loc_labels": lab[None]} for b, lab in zip(boxes, labels)]


def collate_windows(batch):
    """Images' windows -> one flat list of crops and one of targets."""
    crops = [c for item, _ in batch for c in item]
    targets = [t for _, ts in batch for t in ts]
    return crops, targets


# --------------------------------------------------------------------------------------------
# Training


def _scales_from(ds, cfg: OverfeatConfig) -> list[float]:
    from rcnn_cli.fitting import data_stats

    stats = data_stats(ds)
    return choose_scales(stats.longest, stats.long, cfg.input_size, cfg.fill, cfg.max_side)


def train_overfeat(dataset_path: str | Path, split: str | None, out: str | Path, model: OverfeatConfig | None,
                   train_config, *, images: str | Path | None = None, resume: bool = False,
                   command: str = "rcnn overfeat train", sources: dict[str, str] | None = None) -> dict:
    """Train Overfeat's window classifier and regressor (``model``: its :class:`OverfeatConfig`, the
    classes taken from the data; empty ``scales`` are chosen from the training boxes, recorded as
    chosen) on :func:`rcnn_cli.engine.train` with ``train_config``. Returns the engine's summary (+
    ``"model_config"``)."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine import train
    from rcnn_cli.io.runs import model_config
    from rcnn_cli.device import seed_everything

    out = Path(out)
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if resume and (out / "config.json").is_file():
        cfg = model_config(out, NAME, OverfeatConfig)
    else:
        cfg = replace(model or OverfeatConfig(), classes=list(ds.classes))
        given_scales = bool(cfg.scales)
        cfg.weights_id = weights_id(cfg.backbone, cfg.weights)
        if not cfg.scales:
            cfg.scales = _scales_from(ds, cfg)
            logger.info("scales %s: the training objects' sizes (10th-90th percentile) at the window's fill %s",
                        cfg.scales, cfg.fill)
        cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records),
                          "scales": "given" if given_scales else "chosen from the training boxes"}
    seed_everything(train_config.seed)
    network = Localizer(cfg, cfg.weights)
    data = WindowDataset(ds, cfg, seed=train_config.seed)
    summary = train(network, data, out, train_config, collate_fn=collate_windows, resume=resume, model_config=cfg,
                    command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary


# --------------------------------------------------------------------------------------------
# The detector


class OverfeatDetector(Detector):
    """A trained Overfeat network run densely over ``scales`` x ``offsets`` passes, candidates merged
    per class (greedy or NMS). ``DetectConfig.score_threshold`` applies to a window's class
    probability; a greedily merged box scores the sum of its windows' probabilities. Timings:
    ``"network"`` (the dense passes) and ``"merge"``."""

    kind = NAME
    weights = "final"
    max_candidates = 400  # per class, highest window probability first, before merging

    def __init__(self, model: Localizer, config: DetectSettings = None, merge: str | None = None,
                 scales: Sequence[float] | None = None) -> None:
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.device = next(model.parameters()).device
        cfg = model.rcnn_config
        self.classes, self.config = list(cfg.classes), settings_in_effect(config, DetectConfig())
        self.merge = merge or cfg.merge
        self.scales = [float(s) for s in (scales or cfg.scales)]
        if self.merge not in ("greedy", "nms") or not self.scales:
            raise UserError(f"Overfeat needs --merge greedy|nms and at least one scale (got {self.merge}, {self.scales})")

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 weights: str = "final", merge: str | None = None) -> "OverfeatDetector":
        from rcnn_cli.io.runs import load_weights, model_config
        from rcnn_cli.device import resolve_device

        model = Localizer(model_config(Path(run_dir), NAME, OverfeatConfig), weights="none")
        detector = cls(load_weights(model, run_dir, weights).to(resolve_device(device)), config, merge)
        detector.weights = weights
        return detector

    def settings(self) -> dict:
        cfg = self.model.rcnn_config
        return dict(super().settings(), weights=self.weights, merge=self.merge, scales=self.scales,
                    offsets=cfg.offsets, merge_threshold=cfg.merge_threshold)

    def prepare(self, image: torch.Tensor, scale: float, offset: int) -> torch.Tensor:
        """``image (3, H, W)`` in [0, 1] -> the normalised ``channels_last`` input ``(1, 3, H', W')`` of one
        dense pass: scaled by ``scale``, shifted right and down by ``offset`` pixels, padded black (as
        training crops are) to at least one window."""
        from rcnn_cli.backbones import get_spec, normalize

        cfg = self.model.rcnn_config
        h, w = image.shape[-2:]
        sh, sw = max(round(h * scale), 1), max(round(w * scale), 1)
        x = F.interpolate(image[None], size=(sh, sw), mode="bilinear", align_corners=False, antialias=scale < 1)
        ph, pw = max(sh + offset, cfg.input_size), max(sw + offset, cfg.input_size)
        x = F.pad(x, (offset, pw - sw - offset, offset, ph - sh - offset))
        return normalize(x, get_spec(cfg.backbone)).contiguous(memory_format=torch.channels_last)

    def dense(self, image: torch.Tensor, scale: float, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One dense pass over ``image (3, H, W)`` in [0, 1] scaled by ``scale`` and shifted by
        ``offset`` pixels: class probabilities ``(V, C)`` (background dropped), boxes ``(V, C', 4)`` in
        pixels of the original image, and the ``V`` windows ``(V, 4)`` in pixels of the scaled input."""
        cfg = self.model.rcnn_config
        logits, boxes = dense_heads(self.model, self.model.trunk(self.prepare(image, scale, offset)))
        rows, cols = logits.shape[-2:]
        probs = torch.softmax(logits[0].float(), 0)[:-1].flatten(1).T  # (V, C)
        rel = boxes[0].float().flatten(2).permute(2, 0, 1)  # (V, C', 4) in window coordinates
        win = window_boxes(rows, cols, cfg.input_size, offset).to(rel)
        px = win[:, None, :2].repeat(1, 1, 2) + rel * cfg.input_size
        return probs, px / scale, win

    @torch.inference_mode()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        x = to_tensor(image).to(self.device)
        passes = [self.dense(x, s, o) for s in self.scales for o in self.model.rcnn_config.offsets]
        probs = torch.cat([p for p, _, _ in passes])
        boxes = torch.cat([b for _, b, _ in passes])
        t1 = time.perf_counter()
        b, s, labels = self.merge_candidates(probs, boxes, *image.size)
        det = ImageDetections(image_id, b, s, [self.classes[i] for i in labels])
        det.timings = {"network": t1 - t0, "merge": time.perf_counter() - t1}
        return det

    def merge_candidates(self, probs: torch.Tensor, boxes: torch.Tensor, width: int, height: int):
        """Windows' ``probs (V, C)`` and ``boxes (V, C', 4)`` (pixels) -> merged boxes ``(D, 4)``
        clipped to the image, scores, labels; at most ``top_k``, highest score first."""
        from torchvision.ops import clip_boxes_to_image

        from torchvision.ops import batched_nms

        from rcnn_cli.boxes import order_corners

        out_b, out_s, out_l = [], [], []
        for c in range(probs.shape[1]):
            p = probs[:, c]
            keep = torch.nonzero(p >= self.config.score_threshold).flatten()
            keep = keep[torch.argsort(p[keep], descending=True)][: self.max_candidates]
            if not len(keep):
                continue
            cand = clip_boxes_to_image(order_corners(boxes[keep, c if boxes.shape[1] > 1 else 0]), (height, width))
            if self.merge == "greedy":
                mb, ms, _ = greedy_merge(cand.cpu(), p[keep].cpu(), self.model.rcnn_config.merge_threshold)
            else:
                k = batched_nms(cand, p[keep], torch.zeros_like(keep), self.config.nms)
                mb, ms = cand[k].cpu(), p[keep][k].cpu()
            out_b.append(mb), out_s.append(ms), out_l.extend([c] * len(ms))
        if not out_b:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
        b, s = torch.cat(out_b), torch.cat(out_s)
        order = torch.argsort(s, descending=True, stable=True)[: self.config.top_k]
        return b[order].numpy().astype(np.float32), s[order].numpy(), [out_l[i] for i in order.tolist()]


# ----------------------------------------------------------------------------------------------
# what the registry knows of Overfeat
# ----------------------------------------------------------------------------------------------

def _compare_step(c) -> None:
    """``rcnn compare``: window training, dense detection over scales chosen from the training boxes."""
    from rcnn_cli.detector import DetectConfig
    from rcnn_cli.io.runs import model_config

    V, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = {"V": V, "D": D, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
              "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        model = OverfeatConfig(**{k: V[k] for k in ("input_size", "offsets", "merge")}, backbone=c.backbone,
                               weights=c.settings["model"]["weights"])
        return train_overfeat(d.path, d.train_split, run_dir, model, c.train_config(V), images=d.images,
                              resume=resume, command=f"{c.command} ({NAME})")

    result = c.train_and_evaluate(
        NAME, config, run_dir, train,
        lambda: OverfeatDetector.from_run(run_dir, device=c.device, config=DetectConfig(**D)))
    result["scales"] = model_config(run_dir, NAME, OverfeatConfig).scales
    c.results[NAME] = result


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    V = s[NAME]
    return (f"- Overfeat: {V['input_size']}-px windows at a stride of 32 px (FC layers as convolutions), "
            f"scales {report['results'][NAME].get('scales')} (chosen from the training boxes), offsets "
            f"{V['offsets']}, {V['merge']} merge; {V['epochs']} epochs, lr {V['lr']} (x0.1 at epochs "
            f"{V['lr_steps']}), batch {V['batch_size']} images")


def _claim(report: Mapping[str, Any]) -> str | None:
    """The R-CNN paper: region proposals + CNN features beat Overfeat's dense sliding window."""
    res = report["results"]
    if "rcnn" not in report["methods"] or NAME not in report["methods"]:
        return None
    mo, mc = res[NAME].get("mAP", {}).get("voc12"), res["rcnn"].get("mAP", {}).get("voc12")
    if None in (mo, mc):
        return None
    return (f"- R-CNN paper: region proposals + CNN features beat Overfeat's dense sliding window at detection "
            f"(ILSVRC 2013: 31.4 vs 24.3 mAP). Here: R-CNN {100 * mc:.1f} vs Overfeat {100 * mo:.1f} mAP (VOC12)"
            f" -> {'holds' if mc > mo else 'does not hold'}.")


#: ``rcnn compare``'s settings per budget.
COMPARE_SETTINGS = {
    "quick": {"input_size": 224, "offsets": [0], "merge": "greedy", "epochs": 6, "lr": 0.002, "lr_steps": [5],
              "warmup_iters": 20, "batch_size": 4, "max_iters": None},
    "full": {"input_size": 224, "offsets": [0, 16], "merge": "greedy", "epochs": 16, "lr": 0.002,
             "lr_steps": [12], "warmup_iters": 50, "batch_size": 4, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="Overfeat", detector=OverfeatDetector, config=OverfeatConfig,
    compare=CompareEntry(
        settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe, claim=_claim,
        input_text=lambda s, result: f"{s[NAME]['input_size']}-px windows, {len(result.get('scales', []))} scales",
        proposals=lambda s: "none (every window, stride 32)"))
