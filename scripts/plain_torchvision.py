"""The reference the benchmarks time our Faster R-CNN against: a plain torchvision ``FasterRCNN`` (eager,
NCHW) with a run's trunk, anchors, sizes, thresholds and weights (used by ``bench_detect.py`` and
``bench_runtime.py`` only)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def plain_torchvision(faster_dir: Path, device):
    """A plain torchvision ``FasterRCNN`` (eager, NCHW) with a run's trunk, anchors, sizes, thresholds
    and weights: the reference the benchmarks time ours against. ``(None, cfg)`` for FPN or backbone-head runs."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    from rcnn_cli.backbones import build_trunk
    from rcnn_cli.io.tensors import load_state
    from rcnn_cli.models.faster_rcnn.model import _model_config_from, _Trunk

    cfg = _model_config_from(faster_dir)
    if cfg.fpn or cfg.head != "mlp" or int(cfg.representation_size) != 1024:
        return None, cfg
    body, channels, _ = build_trunk(cfg.backbone, "none", freeze_bn=True)
    model = FasterRCNN(
        _Trunk(body, channels), num_classes=len(cfg.classes) + 1, min_size=int(cfg.min_size),
        max_size=int(cfg.max_size), image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
        rpn_anchor_generator=AnchorGenerator(sizes=(tuple(float(s) for s in cfg.anchor_sizes),),
                                             aspect_ratios=(tuple(float(r) for r in cfg.aspect_ratios),)),
        rpn_pre_nms_top_n_test=int(cfg.rpn_pre_nms_top_n_test), rpn_post_nms_top_n_test=int(cfg.rpn_post_nms_top_n_test),
        rpn_nms_thresh=float(cfg.rpn_nms_thresh),
        box_roi_pool=MultiScaleRoIAlign(["0"], int(cfg.roi_output_size), int(cfg.roi_sampling_ratio)),
        box_score_thresh=float(cfg.box_score_thresh), box_nms_thresh=float(cfg.box_nms_thresh),
        box_detections_per_img=int(cfg.box_detections_per_img))
    load_state(model, faster_dir / "model.safetensors")
    return model.to(device).eval(), cfg


class PlainDetector:
    """``detector(image, image_id)`` around a plain torchvision model: to tensor, forward, to numpy."""

    def __init__(self, model, classes: list[str], device):
        self.model, self.classes, self.device = model, classes, device

    def __call__(self, image, image_id):
        import torch

        with torch.inference_mode():
            return self._detect(image, image_id)

    def _detect(self, image, image_id):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        out = self.model([to_tensor(image).to(self.device)])[0]
        boxes = out["boxes"].float().cpu().numpy().astype(np.float32).reshape(-1, 4)
        scores = out["scores"].float().cpu().numpy().astype(np.float32)
        names = [self.classes[int(i) - 1] for i in out["labels"].cpu().tolist()]
        return ImageDetections(image_id, boxes, scores, names, timings={"network": time.perf_counter() - t0})
