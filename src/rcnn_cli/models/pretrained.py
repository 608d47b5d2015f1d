"""Detectors trained by others: torchvision's COCO Faster R-CNNs (``--model coco``, the default of
``rcnn detect``, and ``coco-mobilenet``), loaded through torchvision's weights API from its cache
(``$TORCH_HOME/hub/checkpoints``) or, online, downloaded there once. Offline with nothing cached
(or with ``RCNN_OFFLINE=1``, as the tests run) it is one line that says how to get a model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rcnn_cli.detector import REGRESSED_NMS, DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.method import Method

__all__ = ["PRETRAINED", "PretrainedDetector", "cached_weights"]

#: The kind of these detectors (named by ``--model``, no run directory).
NAME = "coco"

#: ``--model`` name -> (torchvision builder, weights enum, weights tag).
PRETRAINED = {"coco": ("fasterrcnn_resnet50_fpn", "FasterRCNN_ResNet50_FPN_Weights", "COCO_V1"),
              "coco-mobilenet": ("fasterrcnn_mobilenet_v3_large_fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
                                 "COCO_V1")}

NO_MODEL = ("train one (`rcnn faster train DATA --split trainval --out run`, then `--model run`), give an exported "
            "`--model model.onnx`, or run once online for `--model coco` (torchvision's COCO Faster R-CNN, "
            "cached in $TORCH_HOME)")


def _weights(name: str):
    import torchvision.models.detection as D

    _, enum, tag = PRETRAINED[name]
    return getattr(getattr(D, enum), tag)


def cached_weights(name: str) -> Path:
    """Where torchvision's weights API keeps the checkpoint of ``name``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(_weights(name).url).path)


def _state(name: str) -> dict:
    """The checkpoint's tensors (read tensors-only), from the cache, else downloaded when allowed."""
    import socket

    weights, path = _weights(name), cached_weights(name)
    if not path.is_file() and os.environ.get("RCNN_OFFLINE"):
        raise UserError(f"--model {name}: torchvision's COCO weights are not cached ({path}) and RCNN_OFFLINE is set; "
                        + NO_MODEL)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt cache: one line
        raise UserError(f"--model {name}: torchvision's COCO weights could not be loaded ({type(e).__name__}; "
                        f"looked for {path}); " + NO_MODEL) from None
    finally:
        socket.setdefaulttimeout(previous)


class PretrainedDetector(Detector):
    """torchvision's COCO Faster R-CNN: ``detect(image, image_id) -> ImageDetections`` in COCO's 80 classes."""

    kind = NAME

    def __init__(self, name: str, model, classes: list[str], config: DetectSettings = None) -> None:
        self.name, self.model = name, model.eval()
        self.classes = [c for c in classes if c not in ("__background__", "N/A")]
        self._names = classes  # torchvision's label index -> name (with its gaps)
        self.device = next(model.parameters()).device
        heads = model.roi_heads
        self.configure(settings_in_effect(config, DetectConfig(float(heads.score_thresh), REGRESSED_NMS,
                                                               int(heads.detections_per_img))))

    def configure(self, config: DetectConfig) -> None:
        self.config, heads = config, self.model.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = config.score_threshold, config.nms, config.top_k

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None) -> "PretrainedDetector":
        import torchvision.models.detection as D

        from rcnn_cli.device import resolve_device

        name = str(run_dir)
        weights = _weights(name)
        model = getattr(D, PRETRAINED[name][0])(weights=None, weights_backbone=None)
        model.load_state_dict(_state(name))
        return cls(name, model.to(resolve_device(device)), list(weights.meta["categories"]), config)

    def settings(self) -> dict:
        return dict(super().settings(), model=self.name, weights=str(cached_weights(self.name)))

    def detect(self, image, image_id: str):
        import torch

        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model([to_tensor(image).to(self.device)])[0]
        names = [self._names[int(i)] for i in out["labels"].cpu().tolist()]
        keep = np.asarray([n in self.classes for n in names], bool)  # never COCO's unused ids ("N/A")
        det = ImageDetections(image_id, out["boxes"].float().cpu().numpy().reshape(-1, 4)[keep],
                              out["scores"].float().cpu().numpy().astype(np.float32)[keep],
                              [n for n, k in zip(names, keep) if k])
        det.timings = {"network": time.perf_counter() - t0}
        return det


METHOD = Method(name=NAME, title="torchvision's COCO Faster R-CNN", detector=PretrainedDetector,
                named=lambda model: model in PRETRAINED)
