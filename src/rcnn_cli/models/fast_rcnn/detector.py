"""The trained Fast R-CNN as a :class:`rcnn_cli.detector.Detector` (selective search, or a proposals file)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.log import logger
from rcnn_cli.models.fast_rcnn.config import NAME
from rcnn_cli.models.fast_rcnn.model import FastRCNN, load_fast_rcnn


class FastRCNNDetector(Detector):
    """A trained Fast R-CNN: ``detect(image, image_id) -> ImageDetections``.

    Proposals come from ``proposals`` (a proposals file or reader) when it has the image, else from
    selective search run on the fly with the settings the model was trained with. ``timings``:
    "proposals", "network" (resize + trunk + RoI head + NMS on the device), "post" (class names).
    """

    kind = NAME
    weights = "final"  # which weights of the run (set by from_run)
    runtime = "torch"

    def __init__(self, model: FastRCNN, config: DetectSettings = None, proposals=None,
                 max_proposals: int | None = None) -> None:
        from rcnn_cli.memory import reuse_memory

        reuse_memory()
        self.model = model.to(memory_format=torch.channels_last)  # 4-d weights; the trainer's layout too
        self.device = next(model.parameters()).device
        cfg = model.config
        self.config = settings_in_effect(config, DetectConfig(cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img))
        self.max_proposals = int(max_proposals or cfg.max_proposals)
        self.configure(self.config)
        cfg.max_proposals = self.max_proposals
        self.classes = list(cfg.classes)
        self.reader, self._own_reader = _open_proposals(proposals)
        self._warned = False

    def configure(self, config: DetectConfig) -> None:
        self.config, cfg = config, self.model.config
        cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img = config.score_threshold, config.nms, config.top_k

    @classmethod
    def from_run(cls, run_dir, device: str = "auto", config: DetectSettings = None, proposals=None,
                 max_proposals: int | None = None, weights: str = "final",
                 runtime: str = "torch") -> "FastRCNNDetector":
        """``proposals``: a proposals file (else selective search on the fly); ``max_proposals``:
        top-ranked proposals used per image (default: as trained); ``weights``: final | best;
        ``runtime``: the trunk's (torch, onnxruntime, openvino, auto; the RoI head stays in torch)."""
        from pathlib import Path

        from rcnn_cli.io.files import file_sha256
        from rcnn_cli.io.runs import weights_file
        from rcnn_cli.device import resolve_device
        from rcnn_cli.backends import RuntimeTrunk, resolve_runtime

        model = load_fast_rcnn(run_dir, resolve_device(device), weights)
        runtime = resolve_runtime(runtime, next(model.parameters()).device.type)
        if runtime != "torch":
            key = {"run": "fast-trunk", "weights": file_sha256(weights_file(run_dir, weights))}
            model.trunk = RuntimeTrunk(model.trunk, runtime, Path(run_dir) / "graphs", key)
        detector = cls(model, config, proposals, max_proposals)
        detector.weights, detector.runtime = weights, runtime
        return detector

    def close(self) -> None:
        if self._own_reader:
            self.reader.close()

    def settings(self) -> dict:
        return dict(super().settings(), max_proposals=self.max_proposals, weights=self.weights,
                    runtime=self.runtime,
                    proposals=str(getattr(self.reader, "path", "")) or "selective search on the fly")

    def propose(self, image, image_id: str) -> np.ndarray:
        """Proposals ``(N, 4)``: from the store when it has the image (rescaled to this image's size),
        else selective search with the training run's settings."""
        from rcnn_cli.proposals import boxes_for, selective_search

        if self.reader is not None:
            if image_id in self.reader:
                return boxes_for(self.reader, image_id, image.size)
            logger.warning("%s: not in the proposals file; running selective search", image_id)
        settings = self.model.config.proposals or {}
        method = settings.get("method", "selective-search")
        if method not in ("selective-search", "selective_search", "ss") and not self._warned:
            logger.warning("the model was trained on '%s' proposals; without --proposals, selective search is used", method)
            self._warned = True
        kwargs = {k: settings[k] for k in ("mode", "max_size", "min_size") if settings.get(k) is not None}
        return np.asarray(selective_search(image, **kwargs), np.float32).reshape(-1, 4)

    @torch.no_grad()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.device import synchronize

        t0 = time.perf_counter()
        boxes = self.propose(image, image_id)[: self.max_proposals]
        t1 = time.perf_counter()
        out = self.model([to_tensor(image).to(self.device)], proposals=[torch.from_numpy(boxes).to(self.device)])[0]
        synchronize(self.device)
        t2 = time.perf_counter()
        labels = [self.classes[int(i) - 1] for i in out["labels"].tolist()]
        det = ImageDetections(image_id, out["boxes"].float().cpu().numpy(), out["scores"].float().cpu().numpy(),
                              labels, num_proposals=int(len(boxes)))
        det.timings = {"proposals": t1 - t0, "network": t2 - t1, "post": time.perf_counter() - t2}
        return det


def _open_proposals(proposals) -> tuple[Any, bool]:
    """``(reader or None, whether it was opened here)`` from a path, a reader or None."""
    import os

    from rcnn_cli.proposals import load as load_proposals

    if isinstance(proposals, (str, os.PathLike)):
        return load_proposals(proposals), True
    return proposals, False
