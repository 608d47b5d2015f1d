"""Fast R-CNN's configuration (:class:`FastRCNNConfig`, the run's ``model`` record), its name and training
defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rcnn_cli.detector import REGRESSED_NMS, DetectConfig
from rcnn_cli.errors import UserError
from rcnn_cli.method import DEFAULT_BACKBONE


#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "fast"

#: Training settings of ``rcnn fast train`` that differ from :class:`rcnn_cli.engine.TrainConfig`'s.
TRAIN_DEFAULTS = {"epochs": 10}

#: Box-coder weights of Fast/Faster R-CNN (targets divided by stds 0.1, 0.1, 0.2, 0.2).
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@dataclass
class FastRCNNConfig:
    """Everything needed to rebuild the network (stored in the run's ``config.json``)."""

    backbone: str = DEFAULT_BACKBONE
    classes: list[str] = field(default_factory=list)
    weights: str = "imagenet"  # the backbone's starting weights (imagenet | none | a file)
    weights_id: str = ""
    head: str = "auto"              # "mlp": 7x7 RoI pool + two new FC layers; "backbone": the backbone's own head
    roi_size: int = 7
    roi_align: bool = False
    representation_size: int = 1024  # width of the two FC layers of head "mlp"
    frozen_layers: int | None = None  # leading trunk modules not trained (None: the backbone registry's)
    min_size: int = 600
    max_size: int = 1000
    # training
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    max_proposals: int = 2000
    # inference
    score_thresh: float = DetectConfig.score_threshold
    nms_thresh: float = REGRESSED_NMS
    detections_per_img: int = DetectConfig.top_k
    # how proposals were made for training (detect without a file makes them the same way)
    proposals: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)  # e.g. the settings chosen from the data

    def __post_init__(self) -> None:
        if not 0 < self.fg_fraction <= 1:
            raise UserError(f"--fg-fraction must be in (0, 1], got {self.fg_fraction}")
        if self.rois_per_image < 1:
            raise UserError(f"--rois-per-image must be at least 1, got {self.rois_per_image}")
        if self.min_size < 32 or self.max_size < self.min_size:
            raise UserError(f"--min-size {self.min_size} / --max-size {self.max_size}: need 32 <= min-size <= max-size")
        if self.head not in ("auto", "mlp", "fc", "backbone"):
            raise UserError(f"--head {self.head}: choose mlp or backbone (or auto)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolved_head(self) -> str:
        if self.head == "fc":  # the name runs of rcnn 0.1 recorded for the MLP head
            return "mlp"
        if self.head != "auto":
            return self.head
        return "backbone" if self.backbone in ("vgg16", "alexnet") else "mlp"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = "fast_rcnn"
        d["head"] = self.resolved_head()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FastRCNNConfig":
        if d.get("arch", "fast_rcnn") != "fast_rcnn":
            raise UserError(f"the model is a {d.get('arch')} model, not Fast R-CNN")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
