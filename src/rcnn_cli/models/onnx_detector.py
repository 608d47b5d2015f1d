"""A whole Fast or Faster R-CNN exported to ONNX (``rcnn export RUN --format onnx [--part
detector]``), run by ONNX Runtime.

The graph is the detector end to end: an RGB image ``(3, H, W)`` float32 in ``[0, 1]`` (and, for
Fast R-CNN, ``(P, 4)`` proposals: selective search with the run's settings runs here) in;
resizing, normalisation, RPN or RoI pooling, the head, box decoding and per-class NMS inside;
``boxes`` ``(N, 4)`` in the input's pixels, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` (``1..K``,
``classes[label - 1]``) out. It is exported with no score threshold, so the threshold is applied here (the run's
by default). ``<model>.onnx.json`` names the classes, sizes and settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.method import Method

__all__ = ["OnnxDetector", "describe_onnx"]

#: The kind of these detectors (named by ``--model``, no run directory).
NAME = "onnx"


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """The description beside an exported whole detector; a missing or foreign one is one line."""
    info_path = Path(str(path) + ".json")
    if not info_path.is_file():
        raise UserError(f"{path}: no {info_path.name} beside it (export it with `rcnn export RUN --format onnx`)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("part") != "detector":
        raise UserError(f"{path}: {info.get('what', 'not a whole detector')}; `rcnn detect` runs whole-detector "
                        "exports (`rcnn export RUN --format onnx` of a Faster R-CNN run, `--part detector` of a Fast one)")
    return info


class OnnxDetector(Detector):
    """``detect(image, image_id) -> ImageDetections`` from an exported whole detector (ONNX Runtime).

    A large photo is shrunk first exactly as the run's own detector shrinks it
    (:func:`rcnn_cli.data.images.fit_image`), so the boxes agree with the run's.
    """

    kind = NAME

    def __init__(self, path: Path, info: dict[str, Any], config: DetectSettings = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("an ONNX model needs onnxruntime (pip install 'rcnn-cli[onnx]')") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.info = path, info
        self.classes = list(info["classes"])
        self.device = "cpu"
        self.config = settings_in_effect(config, DetectConfig(**info["detect"]))

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None) -> "OnnxDetector":
        if str(device) not in ("auto", "cpu"):
            raise UserError(f"--device {device}: an ONNX model runs on the CPU here (ONNX Runtime)")
        return cls(Path(run_dir), describe_onnx(run_dir), config)

    def settings(self) -> dict:
        return dict(super().settings(), model=str(self.path), runtime="onnxruntime",
                    nms_in_graph=self.info["detect"]["nms"])

    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import fit_image, to_tensor
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        feeds, num_proposals, small, k = {}, None, image, 1
        if any(i["name"] == "proposals" for i in self.info["inputs"]):  # Fast R-CNN: regions come in
            feeds["proposals"] = self._proposals(image)
            num_proposals = len(feeds["proposals"])
        else:
            small, k = fit_image(image, int(self.info["min_size"]), int(self.info["max_size"]))
        t1 = time.perf_counter()
        feeds["image"] = to_tensor(small).numpy().astype(np.float32)
        boxes, scores, labels = self.session.run(["boxes", "scores", "labels"], feeds)
        t2 = time.perf_counter()
        keep = np.flatnonzero(scores >= self.config.score_threshold)[: self.config.top_k]
        boxes = boxes[keep].astype(np.float32) * k
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
        names = [self.classes[int(i) - 1] for i in labels[keep]]
        det = ImageDetections(image_id, boxes.reshape(-1, 4), scores[keep].astype(np.float32), names,
                              num_proposals=num_proposals)
        det.timings = {"proposals": t1 - t0, "network": t2 - t1, "post": time.perf_counter() - t2}
        return det

    def _proposals(self, image) -> np.ndarray:
        """Fast R-CNN's proposals: selective search with the settings the run was trained with."""
        from rcnn_cli.proposals import selective_search

        settings = self.info.get("proposals") or {}
        kwargs = {k: settings[k] for k in ("mode", "max_size", "min_size") if settings.get(k) is not None}
        boxes = np.asarray(selective_search(image, **kwargs), np.float32).reshape(-1, 4)
        return boxes[: int(self.info.get("max_proposals") or len(boxes))]


METHOD = Method(name=NAME, title="an exported whole detector (.onnx)", detector=OnnxDetector,
                named=lambda model: Path(model).suffix.lower() == ".onnx" and Path(model).is_file())
