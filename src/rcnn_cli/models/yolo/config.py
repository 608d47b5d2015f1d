"""YOLO v1's configuration (:class:`YOLOConfig`, the run's ``model`` record), its name and training defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rcnn_cli.detector import DetectConfig
from rcnn_cli.errors import UserError
from rcnn_cli.method import ModelConfig


MODEL_VERSION = 1

#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "yolo"
#: Training settings of ``rcnn yolo train`` that differ from :class:`rcnn_cli.engine.TrainConfig`'s.
TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 8, "lr": 0.005, "weight_decay": 5e-4, "warmup_iters": 100}


@dataclass
class YOLOConfig(ModelConfig):
    """Everything needed to rebuild a YOLO v1 network (the run's ``model`` record); validates itself."""

    kind: str = "yolo_v1"
    version: int = MODEL_VERSION
    grid: int = 7
    boxes_per_cell: int = 2
    input_size: int | None = None  # None: 64 * grid (the paper's 448 for S = 7)
    head: str = "conv"  # "conv" (1x1 convolutions: each cell from its own window) or "fc" (the paper's)
    hidden: int = 512
    head_channels: int = 256
    dropout: float = 0.5
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    jitter: float = 0.2
    exposure: float = 1.5
    frozen_modules: int | None = None  # None: the backbone registry's
    score_thresh: float = DetectConfig.score_threshold
    nms_thresh: float = DetectConfig.nms
    detections_per_img: int = DetectConfig.top_k
    trained_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rcnn_cli.backbones import get_spec

        get_spec(self.backbone)
        self.classes = list(self.classes)
        if int(self.grid) < 1 or int(self.boxes_per_cell) < 1:
            raise UserError(f"--grid and --boxes-per-cell must be at least 1 (got {self.grid}, {self.boxes_per_cell})")
        self.grid, self.boxes_per_cell = int(self.grid), int(self.boxes_per_cell)
        self.input_size = int(self.input_size or 64 * self.grid)
        if self.input_size not in (32 * self.grid, 64 * self.grid):
            raise UserError(f"--input-size must be 32 x grid (the stride-32 map is the grid) or 64 x grid (a stride-2 "
                            f"layer halves it): {32 * self.grid} or {64 * self.grid} for --grid {self.grid}")
        if self.head not in ("conv", "fc"):
            raise UserError(f"--head must be conv or fc (got '{self.head}')")
        if not 0.0 <= self.jitter < 0.5 or self.exposure < 1.0:
            raise UserError(f"jitter must be in [0, 0.5) and exposure at least 1 (got {self.jitter}, {self.exposure})")

    @property
    def depth(self) -> int:
        """Numbers per cell: ``5 B + C``."""
        return 5 * self.boxes_per_cell + len(self.classes)
