"""What the registry knows of YOLO v1: its :class:`rcnn_cli.method.Method` (detector, export, ``rcnn compare``
column)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from rcnn_cli.method import CompareEntry, Export, Method, schedule_text
from rcnn_cli.models.yolo.config import NAME, YOLOConfig
from rcnn_cli.models.yolo.model import load_model
from rcnn_cli.models.yolo.detector import YOLODetector
from rcnn_cli.models.yolo.train import train_yolo


class _WholeYOLO(nn.Module):
    """A YOLO v1 network from normalised ``(N, 3, S, S)`` squares to its ``(N, S', S', 5B + C)`` output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.trunk(x))


def _network(run) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """The export of the whole network (:class:`rcnn_cli.method.Export`)."""
    from rcnn_cli.backends import normalization

    model, cfg = load_model(run.root)
    s, depth = cfg.input_size, cfg.depth
    return _WholeYOLO(model).eval(), torch.rand(1, 3, s, s), {
        "what": "the whole YOLO v1 network (trunk and head)", "normalization": normalization(cfg.backbone),
        "inputs": [{"name": "images", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        "outputs": [{"name": "grid", "shape": ["batch", cfg.grid, cfg.grid, depth], "dtype": "float32",
                     "meaning": "per cell: B x (x, y, sqrt w, sqrt h, confidence), then the class probabilities"}],
        "caller": f"resize the image to {s}x{s}, normalise, run this; per cell the first {5 * cfg.boxes_per_cell} "
                  f"numbers are {cfg.boxes_per_cell} x (x, y, sqrt w, sqrt h, confidence) and the rest the class "
                  "probabilities: decode with rcnn_cli.models.yolo.decode_output, then threshold, per-class NMS"}


def _compare_step(c) -> None:
    """``rcnn compare``: training and detection, no proposals (``c``: the compare context)."""
    Y, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = c.stage_config({"Y": Y, "D": D})

    def train(resume: bool) -> dict:
        model = {k: Y[k] for k in ("input_size", "grid", "boxes_per_cell")}
        model.update(backbone=c.backbone, score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                     detections_per_img=int(D["top_k"]))
        return train_yolo(d.path, d.train_split, run_dir, YOLOConfig(**model, weights=c.settings["model"]["weights"]),
                          c.train_config(Y), images=d.images, resume=resume, command=f"{c.command} ({NAME})")

    c.results[NAME] = c.train_and_evaluate(NAME, config, run_dir, train,
                                           lambda: YOLODetector.from_run(run_dir, device=c.device))


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    Y = s[NAME]
    return (f"- YOLO v1: {Y['input_size']}x{Y['input_size']} input, {Y['grid']}x{Y['grid']} grid, "
            f"{Y['boxes_per_cell']} boxes per cell; {schedule_text(Y)}")


#: ``rcnn compare``'s settings per budget.
COMPARE_SETTINGS = {
    "quick": {"input_size": 224, "grid": 7, "boxes_per_cell": 2, "epochs": 15, "lr": 0.005, "lr_steps": [12],
              "warmup_iters": 50, "batch_size": 8, "max_iters": None},
    "full": {"input_size": 448, "grid": 7, "boxes_per_cell": 2, "epochs": 60, "lr": 0.005, "lr_steps": [40, 52],
             "warmup_iters": 100, "batch_size": 8, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="YOLO v1", detector=YOLODetector, config=YOLOConfig,
    export=Export(network=_network, batched=True),
    compare=CompareEntry(
        settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe,
        input_text=lambda s, result: f"{s[NAME]['input_size']}x{s[NAME]['input_size']} px, "
                                     f"{s[NAME]['grid']}x{s[NAME]['grid']} grid",
        proposals=lambda s: f"none ({s[NAME]['boxes_per_cell']} boxes per cell)"))
