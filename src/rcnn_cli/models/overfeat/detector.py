"""The trained Overfeat as a :class:`rcnn_cli.detector.Detector`: every window at every scale, merged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.models.localizer import Localizer
from rcnn_cli.models.overfeat.config import NAME, OverfeatConfig
from rcnn_cli.models.overfeat.dense import dense_heads, greedy_merge, window_boxes


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
