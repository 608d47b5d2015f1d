"""The trained Faster R-CNN as a :class:`rcnn_cli.detector.Detector`, and its RPN as a proposal source."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.models.faster_rcnn.config import FasterRCNNConfig, NAME
from rcnn_cli.models.faster_rcnn.model import _model_config_from, load_model


def _rpn_top_n(cfg: dict, post_nms_top_n: int | None) -> dict:
    """Model overrides for ``post_nms_top_n`` RPN proposals per test image (pre-NMS raised to match)."""
    if post_nms_top_n is None:
        return {}
    if post_nms_top_n < 1:
        raise UserError(f"the number of RPN proposals must be at least 1 (got {post_nms_top_n})")
    return {"rpn_post_nms_top_n_test": int(post_nms_top_n),
            "rpn_pre_nms_top_n_test": max(int(cfg.rpn_pre_nms_top_n_test), int(post_nms_top_n))}


def _rpn_boxes(model: nn.Module, images, features) -> list[torch.Tensor]:
    proposals, _ = model.rpn(images, features)
    return proposals


def _trunk(model: nn.Module, x: torch.Tensor):
    """Resize + normalise, then the backbone: ``(ImageList, {"0": features, ...})``."""
    images, _ = model.transform([x])
    features = model.backbone(images.tensors)
    return images, ({"0": features} if isinstance(features, torch.Tensor) else features)


def _to_original(boxes: torch.Tensor, network_hw: tuple[int, int], small, k: int, image) -> torch.Tensor:
    """``(N, 4)`` boxes on the network's input (``network_hw``: height, width) in pixels of the PIL
    ``image``, which reached the network shrunk by ``k`` as ``small`` (``fit_image``; its last pixel
    covers less than ``k``, hence the clipping)."""
    from torchvision.models.detection.transform import resize_boxes
    from torchvision.ops import clip_boxes_to_image

    boxes = resize_boxes(boxes, network_hw, (small.height * k, small.width * k))
    return clip_boxes_to_image(boxes, (image.height, image.width))


class FasterRCNNDetector(Detector):
    """A trained Faster R-CNN: ``detect(image, image_id) -> ImageDetections`` (boxes in original pixels).

    Timings: ``"network"`` (resize, trunk, RPN, RoI head) and ``"post"`` (softmax, box decoding,
    per-class NMS, rescaling); ``num_proposals`` the RPN boxes the head scored.
    """

    kind = NAME
    weights = "final"  # which weights of the run (set by from_run)
    runtime = "torch"

    def __init__(self, model: nn.Module, model_config: FasterRCNNConfig, config: DetectSettings = None) -> None:
        from rcnn_cli.memory import reuse_memory

        reuse_memory()
        self.model, self.model_config = model.to(memory_format=torch.channels_last), model_config
        self.classes: list[str] = list(model_config.classes)
        self.device = next(model.parameters()).device
        heads = model.roi_heads
        own = DetectConfig(float(heads.score_thresh), float(heads.nms_thresh), int(heads.detections_per_img))
        self.configure(settings_in_effect(config, own))

    def configure(self, config: DetectConfig) -> None:
        self.config, heads = config, self.model.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = config.score_threshold, config.nms, config.top_k

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 rpn_top_n: int | None = None, weights: str = "final", runtime: str = "torch") -> "FasterRCNNDetector":
        """``rpn_top_n``: RPN proposals per image (default: the run's, 300); ``weights``: final | best;
        ``runtime``: the trunk's (torch, onnxruntime, openvino, auto; the RPN and head stay in torch)."""
        cfg = _model_config_from(Path(run_dir))
        model, cfg = load_model(run_dir, device, overrides=_rpn_top_n(cfg, rpn_top_n), weights=weights)
        runtime = _use_runtime(model, cfg, runtime, Path(run_dir), weights)
        base = DetectConfig(float(cfg.box_score_thresh), float(cfg.box_nms_thresh),
                            int(cfg.box_detections_per_img))
        detector = cls(model, cfg, settings_in_effect(config, base))
        detector.weights, detector.runtime = weights, runtime
        return detector

    def settings(self) -> dict:
        return dict(super().settings(), rpn_post_nms_top_n=int(self.model_config.rpn_post_nms_top_n_test),
                    weights=self.weights, runtime=self.runtime)

    @torch.inference_mode()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import fit_image, to_tensor
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.device import synchronize

        model, heads, cfg = self.model, self.model.roi_heads, self.model_config
        t0 = time.perf_counter()
        small, k = fit_image(image, cfg.min_size, cfg.max_size)
        x = to_tensor(small).to(self.device, non_blocking=True)
        images, features = _trunk(model, x)
        proposals = _rpn_boxes(model, images, features)
        pooled = heads.box_roi_pool(features, proposals, images.image_sizes)
        logits, deltas = heads.box_predictor(heads.box_head(pooled))
        synchronize(self.device)
        t1 = time.perf_counter()
        boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, images.image_sizes)
        boxes = _to_original(boxes[0], images.image_sizes[0], small, k, image)
        names = [self.classes[int(i) - 1] for i in labels[0].cpu().tolist()]
        det = ImageDetections(image_id, boxes.float().cpu().numpy().reshape(-1, 4),
                              scores[0].float().cpu().numpy(), names, num_proposals=int(len(proposals[0])))
        det.timings = {"network": t1 - t0, "post": time.perf_counter() - t1}
        return det


def _use_runtime(model: nn.Module, cfg: FasterRCNNConfig, runtime: str, run_dir: Path, weights: str) -> str:
    """Run the trunk of ``model`` in ``runtime`` (the graph cached in ``run_dir/graphs``); returns the
    runtime in effect (``auto`` resolved)."""
    from rcnn_cli.io.files import file_sha256
    from rcnn_cli.io.runs import weights_file
    from rcnn_cli.backends import RuntimeTrunk, resolve_runtime

    runtime = resolve_runtime(runtime, next(model.parameters()).device.type, not cfg.fpn)
    if runtime == "torch":
        return runtime
    if cfg.fpn or next(model.parameters()).device.type != "cpu":
        raise UserError(f"--runtime {runtime}: for single-level trunks on the CPU (use --runtime torch)")
    key = {"run": "faster-trunk", "weights": file_sha256(weights_file(run_dir, weights))}
    model.backbone.body = RuntimeTrunk(model.backbone.body, runtime, run_dir / "graphs", key)
    return runtime


def rpn_proposer(model_dir: str | Path, device: str | torch.device = "auto",
                 post_nms_top_n: int = 2000, runtime: str = "torch") -> Callable[[Any], np.ndarray]:
    """The RPN of a trained Faster R-CNN as a region proposal method.

    Returns ``propose(image: PIL.Image) -> (N, 4) float32`` boxes in original image pixels, in
    decreasing objectness, at most ``post_nms_top_n`` after the RPN's NMS at 0.7 (pre-NMS top-N is
    raised to at least that many). Give it to ``rcnn_cli.proposals.run_propose(proposer=...)``
    to write the standard proposals file.
    """
    from rcnn_cli.data.images import fit_image, to_tensor

    cfg = _model_config_from(Path(model_dir))
    model, _cfg = load_model(model_dir, device, overrides=_rpn_top_n(cfg, post_nms_top_n))
    model = model.to(memory_format=torch.channels_last)
    _use_runtime(model, _cfg, runtime, Path(model_dir), "final")
    dev = next(model.parameters()).device

    @torch.inference_mode()
    def propose(image) -> np.ndarray:
        small, k = fit_image(image, cfg.min_size, cfg.max_size)
        images, features = _trunk(model, to_tensor(small).to(dev))
        boxes = _to_original(_rpn_boxes(model, images, features)[0], images.image_sizes[0], small, k, image)
        return boxes.float().cpu().numpy().astype(np.float32).reshape(-1, 4)

    return propose


def rpn_attrs(model_dir: str | Path, post_nms_top_n: int) -> dict:
    """Attributes recorded in a proposals file written by :func:`rpn_proposer`."""
    model_dir = Path(model_dir)
    cfg = _model_config_from(model_dir)
    return {"method": "rpn", "model": str(model_dir.resolve()), "backbone": cfg.backbone,
            "post_nms_top_n": int(post_nms_top_n), "min_size": int(cfg.min_size), "max_size": int(cfg.max_size)}
