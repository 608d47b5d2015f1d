"""Faster R-CNN's configuration: :class:`FasterRCNNConfig` (everything needed to rebuild the network, the
run's ``model`` record), its defaults and checks, and the method's name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple, Sequence

from rcnn_cli.detector import REGRESSED_NMS, DetectConfig
from rcnn_cli.errors import UserError
from rcnn_cli.fitting import RPN_TEST_PROPOSALS
from rcnn_cli.method import DEFAULT_BACKBONE, ModelConfig


MODEL_KIND = "faster_rcnn"
#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "faster"

#: Training settings of ``rcnn faster train`` (and of the pipeline's Faster R-CNN stage) that differ from
#: :class:`rcnn_cli.engine.TrainConfig`'s: the schedule follows the time budget, a cosine with a moving
#: average of the weights where the budget cuts the data's schedule, the paper's step schedule where it runs
#: whole (``auto``; the paired runs in docs/quality.md).
TRAIN_DEFAULTS = {"epochs": 12, "lr_schedule": "auto", "ema": 0.999}
#: ``--defaults paper``: the paper's step schedule, no average (where not given).
PAPER_TRAIN = {"lr_schedule": "step", "ema": 0.0}
MODEL_VERSION = 1

#: Anchor sizes (pixels of the resized image): the paper's, and one per level of a feature pyramid.
PAPER_ANCHOR_SIZES = (128.0, 256.0, 512.0)
FPN_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)


def _check_anchors(cfg: "FasterRCNNConfig") -> None:
    sizes, ratios = cfg.anchor_sizes, cfg.aspect_ratios
    if not sizes or any(float(s) <= 0 for s in sizes):
        raise UserError(f"anchor sizes must be positive numbers (got {sizes})")
    if not ratios or any(float(r) <= 0 for r in ratios):
        raise UserError(f"aspect ratios must be positive numbers (got {ratios})")
    if cfg.fpn and len(sizes) != cfg.pyramid.anchor_count:
        raise UserError(f"with --fpn on {cfg.backbone} give {cfg.pyramid.anchor_count} anchor sizes (ResNet-50: one per "
                        f"level P2-P6; MobileNetV3: all five at each of its 3 levels; EfficientNet-Lite: one per level "
                        f"P3-P6; got {len(sizes)})")


@dataclass
class FasterRCNNConfig(ModelConfig):
    """Everything needed to rebuild the network (the run's ``model`` record); defaults are the paper's
    (torchvision's where the paper is silent). Validates itself; unknown names are a UserError.
    The ``rpn_*`` and ``box_*`` settings are torchvision ``FasterRCNN``'s arguments of the same name."""

    method: ClassVar[str] = NAME  # the runs it is trained in

    kind: str = MODEL_KIND
    version: int = MODEL_VERSION
    fpn: bool = False
    head: str = "mlp"                 # "mlp" (TwoMLPHead) or "backbone" (build_head)
    representation_size: int = 1024
    frozen_modules: int | None = None  # None: the backbone registry's frozen_modules
    image_mean: list[float] | None = None  # None: the backbone's normalisation
    image_std: list[float] | None = None
    min_size: int = 600
    max_size: int = 1000
    train_min_sizes: list[int] | None = None  # multi-scale training: shorter sides drawn per image (+ min_size)
    color_jitter: float = 0.0         # training: brightness, contrast, saturation x 1 +- up to this (DetectionDataset)
    hue_jitter: float = 0.0           # training: hue turned by up to this fraction of the colour circle (DetectionDataset)
    crop_scale: float = 1.0           # training: half the images cropped to sides in [this, 1] x theirs (engine/augment.py)
    mosaic: float = 0.0               # training: probability of a mosaic of four images (engine/augment.py)
    anchor_sizes: list[float] | None = None  # None: PAPER_ANCHOR_SIZES, with fpn Pyramid.default_anchor_sizes
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    auto_anchors: bool = False
    rpn_nms_thresh: float = 0.7
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = RPN_TEST_PROPOSALS
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_score_thresh: float = DetectConfig.score_threshold
    box_nms_thresh: float = REGRESSED_NMS
    box_detections_per_img: int = DetectConfig.top_k
    trained_on: dict[str, Any] = field(default_factory=dict)

    @property
    def pyramid(self) -> Pyramid | None:
        """The backbone's :class:`Pyramid` with ``fpn``, else ``None``."""
        return FPN_BACKBONES[self.backbone] if self.fpn else None

    @property
    def anchors_follow_data(self) -> bool:
        """Whether the anchor sizes are fitted to the data unless given (:func:`rcnn_cli.fitting.fits_anchors`):
        always on a single level; with a pyramid, when it has no COCO RPN to match."""
        return self.pyramid is None or self.pyramid.fit_anchors

    def __post_init__(self) -> None:
        from rcnn_cli.backbones import get_spec

        spec = get_spec(self.backbone)
        self.classes = list(self.classes)
        self.image_mean = list(self.image_mean or spec.mean)
        self.image_std = list(self.image_std or spec.std)
        if self.fpn and self.backbone not in FPN_BACKBONES:
            raise UserError(f"--fpn is available for {', '.join(FPN_BACKBONES)} (not {self.backbone})")
        if self.anchor_sizes is None:
            self.anchor_sizes = self.pyramid.default_anchor_sizes() if self.fpn else list(PAPER_ANCHOR_SIZES)
        self.anchor_sizes = [float(v) for v in self.anchor_sizes]
        self.aspect_ratios = [float(v) for v in self.aspect_ratios]
        if self.head not in ("mlp", "backbone"):
            raise UserError(f"head must be 'mlp' or 'backbone' (got '{self.head}')")
        if self.fpn and self.head == "backbone":
            raise UserError("head 'backbone' is not available with --fpn (use the MLP head)")
        for name in ("min_size", "max_size"):
            if int(getattr(self, name)) < 16:
                raise UserError(f"--{name.replace('_', '-')} must be at least 16 (got {getattr(self, name)})")
        if int(self.max_size) < int(self.min_size):
            raise UserError(f"--max-size ({self.max_size}) is smaller than --min-size ({self.min_size})")
        if not 0.1 <= float(self.crop_scale) <= 1.0:
            raise UserError(f"--crop-scale must be in [0.1, 1] (got {self.crop_scale}; 1: no crops)")
        if not 0.0 <= float(self.mosaic) <= 1.0:
            raise UserError(f"--mosaic must be a probability in [0, 1] (got {self.mosaic})")
        sizes = self.train_min_sizes
        if sizes is not None and (not sizes or any(int(v) < 16 for v in sizes)):
            raise UserError(f"training sizes must be at least 16 pixels (got {sizes})")
        _check_anchors(self)


def default_config(classes: Sequence[str], backbone: str = DEFAULT_BACKBONE, **overrides: Any) -> FasterRCNNConfig:
    """The paper's configuration for ``classes`` with ``overrides`` (``None`` values are not given).

    Names not known here are a :class:`UserError` (typos must not pass silently).
    """
    names = {f.name for f in fields(FasterRCNNConfig)}
    for key in overrides:
        if key not in names:
            raise UserError(f"unknown Faster R-CNN setting '{key}'")
    cfg = FasterRCNNConfig(classes=list(classes), backbone=backbone,
                           **{k: v for k, v in overrides.items() if v is not None})
    if not cfg.classes:
        raise UserError("Faster R-CNN needs at least one class")
    return cfg


class Pyramid(NamedTuple):
    """A backbone's feature pyramid: the prefix of its body's layers in the registry network (torchvision
    builds the pyramid: ResNet-50, MobileNetV3; ``None``: built here from
    :func:`rcnn_cli.backbones.build_pyramid_trunk`), the levels the RoI pooling reads, the levels the
    RPN sees, whether every anchor size sits at every level (else one size per level), the pyramid's
    channels, and whether the anchor sizes are fitted to the data by default (no COCO RPN to match)."""

    prefix: str | None
    featmap_names: list[str]
    levels: int
    every_size: bool
    channels: int
    fit_anchors: bool

    @property
    def anchor_count(self) -> int:
        """How many anchor sizes the pyramid takes."""
        return len(FPN_ANCHOR_SIZES) if self.every_size else self.levels

    def default_anchor_sizes(self) -> list[float]:
        """The anchor sizes when neither given nor fitted: 32 px at stride 8 (or 4), doubling per level."""
        return list(FPN_ANCHOR_SIZES[: self.anchor_count])


#: Backbones with a feature pyramid (``--fpn``). ResNet-50: P2-P6 (strides 4-64), one size per level;
#: MobileNetV3: its 3 levels, every size at each; EfficientNet-Lite0-2: P3-P6 from blocks 2, 4, 6
#: (strides 8-64), one fitted size per level.
FPN_BACKBONES = {"resnet50": Pyramid("", ["0", "1", "2", "3"], 5, False, 256, False),
                 "mobilenet_v3_large": Pyramid("features.", ["0", "1"], 3, True, 256, False),
                 **{f"efficientnet_lite{i}": Pyramid(None, ["0", "1", "2"], 4, False, 64, True) for i in range(3)}}
