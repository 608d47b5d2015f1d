"""The trained YOLO v1 as a :class:`rcnn_cli.detector.Detector`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.models.yolo.config import NAME
from rcnn_cli.models.yolo.loss import decode_output
from rcnn_cli.models.yolo.model import load_model, YOLOv1


class YOLODetector(Detector):
    """A trained YOLO v1: one forward pass per image, no proposals. Timings: ``"network"`` (resize,
    normalise, trunk, head) and ``"post"`` (decoding, threshold, per-class NMS)."""

    kind = NAME
    weights = "final"  # which weights of the run (set by from_run)
    runtime = "torch"

    def __init__(self, model: YOLOv1, config: DetectSettings = None) -> None:
        from rcnn_cli.memory import reuse_memory

        reuse_memory()
        cfg = model.rcnn_config
        self.model = model.to(memory_format=torch.channels_last)
        self.device = next(model.parameters()).device
        self.classes = list(cfg.classes)
        self.config = settings_in_effect(config, DetectConfig(cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img))

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 weights: str = "final", runtime: str = "torch") -> "YOLODetector":
        """``weights``: final | best; ``runtime``: the trunk's (torch, onnxruntime, openvino, auto; the head
        stays in torch)."""
        from rcnn_cli.io.files import file_sha256
        from rcnn_cli.io.runs import weights_file
        from rcnn_cli.backends import RuntimeTrunk, resolve_runtime

        model, _ = load_model(run_dir, device, weights)
        runtime = resolve_runtime(runtime, next(model.parameters()).device.type)
        if runtime != "torch":
            if next(model.parameters()).device.type != "cpu":
                raise UserError(f"--runtime {runtime}: for the CPU (use --runtime torch)")
            key = {"run": "yolo-trunk", "weights": file_sha256(weights_file(run_dir, weights))}
            model.trunk = RuntimeTrunk(model.trunk, runtime, Path(run_dir) / "graphs", key)
        detector = cls(model, config)
        detector.weights, detector.runtime = weights, runtime
        return detector

    def settings(self) -> dict:
        cfg = self.model.rcnn_config
        return dict(super().settings(), weights=self.weights, runtime=self.runtime, grid=cfg.grid, boxes_per_cell=cfg.boxes_per_cell,
                    input_size=cfg.input_size)

    @torch.inference_mode()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.device import synchronize

        t0 = time.perf_counter()
        x = to_tensor(image).to(self.device)
        out = self.model([x])[0]
        synchronize(self.device)
        t1 = time.perf_counter()
        boxes, scores, labels = self.postprocess(out, image.size[0], image.size[1])
        det = ImageDetections(image_id, boxes, scores, [self.classes[i] for i in labels])
        det.timings = {"network": t1 - t0, "post": time.perf_counter() - t1}
        return det

    def postprocess(self, out: torch.Tensor, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One output ``(S, S, 5B + C)`` -> ``(boxes (K, 4) pixels, scores (K,), class indices 0..C-1)``."""
        from torchvision.ops import batched_nms, clip_boxes_to_image

        cfg = self.model.rcnn_config
        boxes, scores = decode_output(out.float(), cfg.boxes_per_cell, width, height)
        boxes = clip_boxes_to_image(boxes, (height, width))
        idx, cls = torch.nonzero(scores > self.config.score_threshold, as_tuple=True)
        b, s = boxes[idx], scores[idx, cls]
        keep = batched_nms(b, s, cls, self.config.nms)[: self.config.top_k]
        return (b[keep].cpu().numpy().astype(np.float32).reshape(-1, 4), s[keep].cpu().numpy().astype(np.float32),
                cls[keep].cpu().tolist())
