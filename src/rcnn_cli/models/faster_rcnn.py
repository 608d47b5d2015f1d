"""Faster R-CNN on torchvision's detection modules, with the package's backbone registry.

The network (Ren et al., 2015) is torchvision's :class:`~torchvision.models.detection.FasterRCNN`
wired to a trunk of :mod:`rcnn_cli.backbones`:

- **Resize and normalise** inside the model (``GeneralizedRCNNTransform``): shorter side
  ``min_size`` (600), longer side at most ``max_size`` (1000); the registry's mean/std of the
  backbone (e.g. EfficientNet-Lite's TF ``(x-127)/128``) become ``image_mean``/``image_std``. The
  model takes RGB ``(3, H, W)`` tensors in ``[0, 1]`` at any size and returns boxes in original
  pixels.
- **Trunk**: ``build_trunk`` (stride 16: EfficientNet-Lite0 blocks 0-4, 112 channels; VGG16
  conv5_3, 512; ResNet-50 layer3, 1024; AlexNet conv5, 256) with frozen batch norms (batches of 2
  images cannot estimate statistics) and the first layers frozen as in the papers (VGG16
  conv1-conv2; ResNet-50 conv1 + layer1; EfficientNet-Lite0 stem + blocks 0-1). Or ResNet-50 with
  an FPN (``fpn=True``: torchvision's ``resnet_fpn_backbone``, registry weights copied in).
- **RPN**: a 3x3 conv and two 1x1 convs (objectness and 4 deltas per anchor, torchvision's
  ``RPNHead``); anchors ``anchor_sizes`` x ``aspect_ratios`` (paper: 128, 256, 512 and 0.5, 1, 2)
  at every feature cell, centred on ``(x * 16, y * 16)`` (torchvision's convention; the Caffe
  original centred them on ``x * 16 + 7.5``). Anchors with IoU >= 0.7 with a ground-truth box (and
  the best anchor of each box) are positive, < 0.3 negative, the rest ignored; 256 anchors per
  image with at most half positive. Proposals: top ``pre_nms_top_n`` by objectness, NMS at 0.7,
  top ``post_nms_top_n`` kept (12000/2000 in training, 6000/300 at test).
- **Head**: ``MultiScaleRoIAlign`` to 7x7 and two fully connected layers of 1024 (``TwoMLPHead``),
  or the backbone's own layers after the trunk (``head="backbone"``: VGG16 fc6/fc7 as in the paper,
  ResNet-50 layer4, EfficientNet-Lite0 blocks 5-6), then a softmax over K+1 classes and
  class-specific box deltas (``FastRCNNPredictor``). 128 RoIs per image with 25 % foreground
  (IoU >= 0.5), as py-faster-rcnn.
- **Losses** (the four the lecture lists, each logged by the engine): ``loss_objectness`` (RPN
  classification, binary cross-entropy), ``loss_rpn_box_reg`` (RPN regression, smooth L1),
  ``loss_classifier`` (head classification, cross-entropy), ``loss_box_reg`` (head regression,
  smooth L1 on foreground).

**Box coding**: torchvision's RPN and RoI heads encode and decode with its ``BoxCoder`` (RPN
weights ``(1, 1, 1, 1)``, head ``(10, 10, 5, 5)``, i.e. targets normalised by stds 0.1/0.2). That is
the same coding as :mod:`rcnn_cli.boxes` (``encode``/``decode`` wrap the very same ``BoxCoder``):
one implementation in the package.

Model directory (``rcnn faster train --out RUN_DIR``): ``model.safetensors`` (weights) and
``config.json`` (everything needed to rebuild the network; see :func:`load_model`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rcnn_cli.detector import REGRESSED_NMS, DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.fitting import RPN_TEST_PROPOSALS
from rcnn_cli.log import logger
from rcnn_cli.method import CompareEntry, Export, Method, resize_text

__all__ = [
    "MODEL_KIND",
    "TRAIN_DEFAULTS",
    "FasterRCNNConfig",
    "default_config",
    "build_model",
    "make_anchor_generator",
    "fit_anchor_sizes",
    "load_model",
    "FasterRCNNDetector",
    "rpn_proposer",
]

MODEL_KIND = "faster_rcnn"
#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "faster"

#: Training settings of ``rcnn faster train`` that differ from :class:`rcnn_cli.engine.TrainConfig`'s.
TRAIN_DEFAULTS = {"epochs": 12}
MODEL_VERSION = 1

def _check_anchors(cfg: "FasterRCNNConfig") -> None:
    sizes, ratios = cfg.anchor_sizes, cfg.aspect_ratios
    if not sizes or any(float(s) <= 0 for s in sizes):
        raise UserError(f"anchor sizes must be positive numbers (got {sizes})")
    if not ratios or any(float(r) <= 0 for r in ratios):
        raise UserError(f"aspect ratios must be positive numbers (got {ratios})")
    if cfg.fpn and len(sizes) != 5:
        raise UserError(f"with --fpn give 5 anchor sizes (ResNet-50: one per pyramid level P2-P6; MobileNetV3: all "
                        f"five at each of its 3 levels; got {len(sizes)})")


@dataclass
class FasterRCNNConfig:
    """Everything needed to rebuild the network (the run's ``model`` record); defaults are the paper's
    (torchvision's where the paper is silent). Validates itself; unknown names are a UserError.
    The ``rpn_*`` and ``box_*`` settings are torchvision ``FasterRCNN``'s arguments of the same name."""

    method: ClassVar[str] = NAME  # the runs it is trained in

    classes: list[str] = field(default_factory=list)
    backbone: str = "efficientnet_lite0"
    kind: str = MODEL_KIND
    version: int = MODEL_VERSION
    fpn: bool = False
    weights: str = "imagenet"         # the backbone's starting weights (imagenet | none | a file)
    weights_id: str | None = None
    head: str = "mlp"                 # "mlp" (TwoMLPHead) or "backbone" (build_head)
    representation_size: int = 1024
    frozen_modules: int | None = None  # None: the backbone registry's frozen_modules
    image_mean: list[float] | None = None  # None: the backbone's normalisation
    image_std: list[float] | None = None
    min_size: int = 600
    max_size: int = 1000
    train_min_sizes: list[int] | None = None  # multi-scale training: shorter sides drawn per image (+ min_size)
    color_jitter: float = 0.0         # training: brightness, contrast, saturation x 1 +- up to this (DetectionDataset)
    anchor_sizes: list[float] = field(default_factory=lambda: [128.0, 256.0, 512.0])
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

    def __post_init__(self) -> None:
        from rcnn_cli.backbones import get_spec

        spec = get_spec(self.backbone)
        self.classes = list(self.classes)
        self.image_mean = list(self.image_mean or spec.mean)
        self.image_std = list(self.image_std or spec.std)
        self.anchor_sizes = [float(v) for v in self.anchor_sizes]
        self.aspect_ratios = [float(v) for v in self.aspect_ratios]
        if self.fpn and self.backbone not in FPN_BACKBONES:
            raise UserError(f"--fpn is available for {', '.join(FPN_BACKBONES)} (not {self.backbone})")
        if self.head not in ("mlp", "backbone"):
            raise UserError(f"head must be 'mlp' or 'backbone' (got '{self.head}')")
        if self.fpn and self.head == "backbone":
            raise UserError("head 'backbone' is not available with --fpn (use the MLP head)")
        for name in ("min_size", "max_size"):
            if int(getattr(self, name)) < 16:
                raise UserError(f"--{name.replace('_', '-')} must be at least 16 (got {getattr(self, name)})")
        if int(self.max_size) < int(self.min_size):
            raise UserError(f"--max-size ({self.max_size}) is smaller than --min-size ({self.min_size})")
        sizes = self.train_min_sizes
        if sizes is not None and (not sizes or any(int(v) < 16 for v in sizes)):
            raise UserError(f"training sizes must be at least 16 pixels (got {sizes})")
        _check_anchors(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FasterRCNNConfig":
        """From a run's record (settings this version does not know are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def default_config(classes: Sequence[str], backbone: str = "efficientnet_lite0", **overrides: Any) -> FasterRCNNConfig:
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


# --------------------------------------------------------------------------------------------
# Building the network


def make_anchor_generator(sizes: Sequence[float], aspect_ratios: Sequence[float], levels: int = 1,
                          every_size: bool = False):
    """torchvision ``AnchorGenerator``: with one level, every size x every ratio at each cell;
    with ``levels`` > 1 (FPN), one size per level and every ratio; ``every_size`` (MobileNetV3's
    pyramid): every size x every ratio at each of its 3 levels.

    A ratio ``r`` is height / width: the anchor of size ``s`` is ``s / sqrt(r)`` wide and
    ``s * sqrt(r)`` high (area ``s^2``), centred on the cell's top-left pixel times the stride,
    coordinates rounded to integers.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(float(s) for s in sizes)
    ratios = tuple(float(r) for r in aspect_ratios)
    if levels == 1:
        return AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    if every_size:
        return AnchorGenerator(sizes=(sizes,) * 3, aspect_ratios=(ratios,) * 3)
    if len(sizes) != levels:
        raise UserError(f"{levels} feature levels need {levels} anchor sizes (got {len(sizes)})")
    return AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(ratios,) * levels)


class _Trunk(nn.Module):
    """A stride-16 trunk; ``out_channels`` as torchvision's FasterRCNN expects."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


#: Backbones with a feature pyramid: the body's layers named as the registry network's (prefix),
#: the pyramid levels the RoI pooling reads, and whether every anchor size sits at every level.
FPN_BACKBONES = {"resnet50": ("", ["0", "1", "2", "3"], False),
                 "mobilenet_v3_large": ("features.", ["0", "1"], True)}


def _fpn_backbone(name: str, weights: str) -> nn.Module:
    """torchvision's FPN backbone of ``name`` (frozen batch norms, the last 3 stages trainable, as
    its COCO detectors), the registry network's ``weights`` copied into the body."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    if name == "resnet50":
        fpn = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=3, norm_layer=FrozenBatchNorm2d)
    else:
        fpn = mobilenet_backbone(backbone_name=name, weights=None, fpn=True, trainable_layers=3,
                                 norm_layer=FrozenBatchNorm2d)
    if weights != "none":
        from rcnn_cli.backbones import build_feature_extractor

        prefix = FPN_BACKBONES[name][0]
        src = build_feature_extractor(name, weights).net.state_dict()
        body = fpn.body.state_dict()
        mapped = {k: src[prefix + k] for k in body if prefix + k in src and src[prefix + k].shape == body[k].shape}
        missing = [k for k in body if k not in mapped and not k.endswith("num_batches_tracked")]
        if missing:
            raise UserError(f"{name} weights do not fit the FPN body ({len(missing)} tensors missing, e.g. {missing[0]})")
        fpn.body.load_state_dict(mapped, strict=False)
    return fpn


def build_model(cfg: FasterRCNNConfig, weights: str = "none") -> nn.Module:
    """The torchvision ``FasterRCNN`` described by ``cfg`` (see :func:`default_config`).

    ``weights`` initialises the backbone: ``"imagenet"``, ``"none"`` or a safetensors file of the
    registry's network (at training time); loading a trained model uses ``"none"`` and then the
    run's ``model.safetensors``. Train mode: ``model(images, targets) -> {4 losses}``; eval mode:
    ``model(images) -> [{"boxes" (N,4) original pixels, "scores" (N,), "labels" (N,) 1..K}]``.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    from rcnn_cli.backbones import build_head, build_trunk, freeze_leading, get_spec

    num_classes = len(cfg.classes) + 1
    name = cfg.backbone
    roi_size = int(cfg.roi_output_size)
    box_head = None
    representation = int(cfg.representation_size)
    if cfg.fpn:
        backbone = _fpn_backbone(name, str(weights))
        _, featmap_names, every_size = FPN_BACKBONES[name]
        anchor_gen = make_anchor_generator(cfg.anchor_sizes, cfg.aspect_ratios, levels=5, every_size=every_size)
    else:
        body, channels, _stride = build_trunk(name, weights, freeze_bn=True)
        frozen = cfg.frozen_modules
        freeze_leading(body, get_spec(name).frozen_modules if frozen is None else int(frozen))
        backbone = _Trunk(body, channels)
        featmap_names = ["0"]
        anchor_gen = make_anchor_generator(cfg.anchor_sizes, cfg.aspect_ratios, levels=1)
        if cfg.head == "backbone":
            box_head, representation = build_head(name, weights, freeze_bn=True)
            roi_size = int(box_head.roi_size)
    if box_head is None:
        box_head = TwoMLPHead(backbone.out_channels * roi_size**2, representation)
    rpn_head = RPNHead(backbone.out_channels, anchor_gen.num_anchors_per_location()[0])
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=transform_min_sizes(cfg),
        max_size=int(cfg.max_size),
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchor_gen,
        rpn_head=rpn_head,
        box_roi_pool=MultiScaleRoIAlign(featmap_names, roi_size, int(cfg.roi_sampling_ratio)),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name.startswith(("rpn_", "box_"))},
    )
    model.rcnn_config = cfg
    return model


def transform_min_sizes(cfg: FasterRCNNConfig) -> int | tuple[int, ...]:
    """``GeneralizedRCNNTransform``'s ``min_size``: the test size, or with multi-scale training
    the training sizes with the test size last (torchvision draws one of them per training image
    and resizes to the last one in eval mode)."""
    test = int(cfg.min_size)
    train_sizes = [int(s) for s in cfg.train_min_sizes or []]
    if not train_sizes:
        return test
    return tuple([s for s in dict.fromkeys(train_sizes) if s != test] + [test])


def decode_size(cfg: FasterRCNNConfig) -> tuple[int, int]:
    """``(min_side, max_side)`` the training images are decoded for: the largest training size and
    the longer side's cap (:func:`rcnn_cli.data.images.load_image_for`)."""
    return max(int(s) for s in [cfg.min_size, *(cfg.train_min_sizes or [])]), int(cfg.max_size)


# --------------------------------------------------------------------------------------------
# Anchors fitted to a dataset


def fit_anchor_sizes(dataset, n: int = 3, min_size: int = 600, max_size: int = 1000) -> list[float]:
    """``n`` anchor sizes (sqrt of area, pixels of the *resized* image) fitted to ``dataset``'s boxes:
    :func:`rcnn_cli.fitting.anchor_sizes_from` of its statistics. On BCCD at 480 px this gives about
    40, 100, 190 (platelets, red and white cells) where the paper's 128-512 fit VOC objects."""
    from rcnn_cli.fitting import anchor_sizes_from, data_stats

    return anchor_sizes_from(data_stats(dataset), n, min_size, max_size)


# --------------------------------------------------------------------------------------------
# Loading a trained model


def _model_config_from(run_dir: Path) -> FasterRCNNConfig:
    """The Faster R-CNN model configuration of a run (any run format); another kind is a UserError."""
    from rcnn_cli.io.runs import model_config

    return model_config(run_dir, NAME, FasterRCNNConfig)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", overrides: dict | None = None,
               weights: str = "final") -> tuple[nn.Module, FasterRCNNConfig]:
    """Rebuild a trained model from ``RUN_DIR/config.json`` + ``RUN_DIR/model.safetensors``.

    ``overrides`` replace model settings before building (e.g. the RPN's test-time top-N); ``weights``
    ``best`` takes the best validation epoch's weights (``best/``) instead of the final ones. Returns
    ``(model in eval mode on device, model configuration)``. A missing directory, a configuration
    of another model or weights that do not fit are one-line :class:`UserError`.
    """
    from rcnn_cli.io.runs import weights_file
    from rcnn_cli.io.tensors import load_state
    from rcnn_cli.device import resolve_device

    model_dir = Path(model_dir)
    cfg = _model_config_from(model_dir)
    weights_path = weights_file(model_dir, weights)
    if not weights_path.is_file():
        raise UserError(f"{weights_path}: not found (is the training finished? `rcnn faster train --resume` goes on)")
    if int(cfg.version) > MODEL_VERSION:
        raise UserError(f"{model_dir}/config.json: model version {cfg.version} is newer than this rcnn ({MODEL_VERSION})")
    cfg = replace(cfg, **(overrides or {}))
    model = build_model(cfg, weights="none")
    load_state(model, weights_path)
    return model.to(resolve_device(device)).eval(), cfg


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


# --------------------------------------------------------------------------------------------
# Training and evaluation


def make_evaluate_fn(dataset, classes: Sequence[str], metrics: Sequence[str] = ("voc12",)) -> Callable[[nn.Module, int], dict]:
    """``evaluate_fn(model, epoch) -> {"mAP_voc12": ...}`` for the trainer's per-epoch validation,
    through the one inference loop."""
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset

    def evaluate_fn(model: nn.Module, epoch: int) -> dict:
        dets = detect_dataset(FasterRCNNDetector(model, model.rcnn_config), dataset, classes)
        out = {f"mAP_{m}": float(evaluate(dataset, dets, metric=m)["mAP"]) for m in metrics}
        return dict(out, mAP=out[f"mAP_{metrics[0]}"])  # the trainer keeps the best "mAP" in best/

    return evaluate_fn


def _fit(ds, given: dict, train_config, fixed_anchors: bool, fit: bool, fit_schedule: bool):
    """:func:`rcnn_cli.fitting.fit_faster` for the settings not ``given`` (``None``; anchors also
    ``fixed_anchors``: FPN's five levels or ``--no-auto-anchors``), or nothing without ``fit``; and the
    split's statistics."""
    from rcnn_cli.fitting import Fitted, data_stats, fit_faster
    from rcnn_cli.device import resolve_device

    stats = data_stats(ds)  # a split without one valid box: a one-line error before any training
    if not fit:
        return stats, Fitted()
    given = dict(given, epochs=None if fit_schedule else train_config.epochs)
    if fixed_anchors:
        given["anchor_sizes"] = given.get("anchor_sizes") or "fixed"
    return stats, fit_faster(stats, given, resolve_device(train_config.device).type, train_config.batch_size)


# --------------------------------------------------------------------------------------------
# COCO-pretrained starting points (--init)

#: ``--init NAME``: torchvision's COCO-trained detector whose architecture ``build_model`` rebuilds.
COCO_INITS = {"coco": ("resnet50", "FasterRCNN_ResNet50_FPN_Weights", "COCO_V1"),
              "coco-mobilenet": ("mobilenet_v3_large", "FasterRCNN_MobileNet_V3_Large_FPN_Weights", "COCO_V1")}
PREDICTOR = "roi_heads.box_predictor."


def init_state(init: str) -> dict[str, torch.Tensor]:
    """The tensors of ``--init``: ``coco`` (torchvision's COCO ``fasterrcnn_resnet50_fpn``, from its
    weights API: cached or downloaded), a ``.safetensors`` file, or a PyTorch checkpoint (``.pth``/``.pt``,
    read with ``weights_only=True``: tensors only, never pickled code; a ``{"model": ...}`` wrapper is
    unwrapped). Any failure is one line."""
    if init in COCO_INITS:
        import torchvision.models.detection as D

        _, enum, tag = COCO_INITS[init]
        try:
            return getattr(getattr(D, enum), tag).get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt cache: one line
            raise UserError(f"--init {init}: torchvision's COCO weights could not be loaded ({type(e).__name__}: "
                            f"{e}); they are downloaded once into the torch hub cache: without a network, fetch the "
                            f"file elsewhere and pass --init FILE") from None
    path = Path(init)
    if not path.is_file():
        raise UserError(f"--init {init}: not 'coco' and no such file")
    if path.suffix == ".safetensors":
        from rcnn_cli.io.tensors import load_tensors

        return load_tensors(path, "--init")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--init {path}: not a readable PyTorch checkpoint of tensors ({type(e).__name__})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--init {path}: expected a state dict of tensors")
    return state


def load_init(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> dict[str, Any]:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s, except the box predictor
    (re-initialised for the dataset's classes). Fewer than half of the model's other tensors found is
    a one-line error (another architecture). Returns what was loaded, for the run's record."""
    own = model.state_dict()
    wanted = [k for k in own if not k.startswith(PREDICTOR) and not k.endswith("num_batches_tracked")]
    loaded = {k: state[k] for k in wanted if k in state and tuple(state[k].shape) == tuple(own[k].shape)}
    if len(loaded) < len(wanted) / 2:
        missing = next(k for k in wanted if k not in loaded)
        raise UserError(f"--init {what}: only {len(loaded)} of {len(wanted)} tensors fit this model (e.g. '{missing}'"
                        f" is missing or another shape); COCO checkpoints need --fpn and their backbone "
                        f"({' or '.join(FPN_BACKBONES)})")
    model.load_state_dict(loaded, strict=False)
    logger.info("--init %s: %d of %d tensors loaded; the box predictor starts anew for %d classes", what,
                len(loaded), len(wanted), len(model.rcnn_config.classes))
    return {"init": what, "tensors_loaded": len(loaded), "tensors": len(wanted),
            "not_loaded": sorted(k for k in wanted if k not in loaded)[:20]}


#: The model settings :func:`rcnn_cli.fitting.fit_faster` may choose beside the image scale and anchors.
FITTED_MODEL_SETTINGS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_test", "box_detections_per_img")


def _new_config(ds, dataset_path, split, train_config, sources, *, backbone, weights, fpn, head, anchor_sizes,
                aspect_ratios, auto_anchors, min_size, max_size, train_sizes, model_overrides, fit, fit_schedule):
    """A new run's :class:`FasterRCNNConfig` (settings not given chosen from the data, see
    :func:`train_faster`), the training configuration (epochs fitted with ``fit_schedule``) and the
    settings' sources with the chosen ones marked."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.fitting import anchor_sizes_from

    given = dict(min_size=min_size, max_size=max_size, train_sizes=train_sizes or None,
                 anchor_sizes=anchor_sizes or None,
                 **{k: (model_overrides or {}).get(k) for k in FITTED_MODEL_SETTINGS})
    stats, fitted = _fit(ds, given, train_config, fpn or auto_anchors is False, fit, fit_schedule)
    chosen = {**{k: v for k, v in given.items() if v is not None}, **fitted.values}
    min_size, max_size = int(chosen.get("min_size", 600)), int(chosen.get("max_size", 1000))
    sizes = chosen.get("anchor_sizes") or ([32.0, 64.0, 128.0, 256.0, 512.0] if fpn else None)
    if auto_anchors and "anchor_sizes" not in fitted.values:  # e.g. 5 FPN sizes fitted
        sizes = anchor_sizes_from(stats, len(sizes) if sizes else 3, min_size, max_size)
        logger.info("anchor sizes fitted to the training boxes: %s", ", ".join(f"{s:g}" for s in sizes))
    overrides = dict(model_overrides or {}, **{k: fitted.values[k] for k in FITTED_MODEL_SETTINGS if k in fitted.values})
    overrides.update(fpn=fpn, head=head, min_size=min_size, max_size=max_size,
                     train_min_sizes=[int(s) for s in chosen.get("train_sizes") or []] or None,
                     anchor_sizes=[float(s) for s in sizes] if sizes else None,
                     aspect_ratios=[float(r) for r in aspect_ratios] if aspect_ratios else None)
    cfg = default_config(ds.classes, backbone, **overrides)
    cfg.weights_id = weights_id(backbone, weights)
    cfg.weights = str(weights)
    cfg.auto_anchors = bool(auto_anchors) or "anchor_sizes" in fitted.values
    cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records),
                      "fitted": fitted.record()}
    if "epochs" in fitted.values:
        train_config = replace(train_config, epochs=int(fitted.values["epochs"]), lr_steps=None)
    sources = dict(sources or {}, **{k: f"chosen: {r}" for k, r in fitted.reasons.items()})
    fitted.print("settings chosen from the training data (flags override)")
    return cfg, train_config, sources


def train_faster(dataset_path: str | Path, split: str | None, out: str | Path, train_config, *,
                 images: str | Path | None = None, backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 fpn: bool = False, head: str = "mlp", anchor_sizes: Sequence[float] | None = None,
                 aspect_ratios: Sequence[float] | None = None, auto_anchors: bool | None = None,
                 min_size: int | None = None, max_size: int | None = None, train_sizes: Sequence[int] | None = None,
                 val_split: str | None = None, resume: bool = False, model_overrides: dict | None = None,
                 command: str = "rcnn faster train", sources: dict[str, str] | None = None, fit: bool = True,
                 fit_schedule: bool = False, init: str | None = None) -> dict:
    """Train a Faster R-CNN on a labelled dataset split with :func:`rcnn_cli.engine.train`.

    ``train_config`` is an :class:`rcnn_cli.engine.TrainConfig`. ``auto_anchors`` replaces the
    anchor sizes by :func:`fit_anchor_sizes` of the training boxes (as many sizes as given, 3 by
    default, 5 with ``fpn``). ``train_sizes`` turns on multi-scale training: each training image's
    shorter side is drawn from them and ``min_size`` (the test size). With ``fit`` (default) every
    data-dependent setting left ``None`` (image sizes, training sizes, anchors, the RPN's training
    pre-NMS count in ``model_overrides``) is chosen from the training split by
    :func:`rcnn_cli.fitting.fit_faster`, printed once with its reason and recorded; ``fit_schedule``
    also chooses the epochs (and their steps). ``fit=False``: the paper's values. ``init``: a starting
    point for every layer but the box predictor (:func:`init_state`: ``coco`` means torchvision's COCO
    ``fasterrcnn_resnet50_fpn`` and its architecture, ``--backbone resnet50 --fpn``; or a file). ``resume`` continues ``out``'s
    checkpoint with the model configuration recorded there. Writes ``out/model.safetensors`` and
    ``out/config.json`` (model + training settings); returns the engine's summary (+ ``"model_config"``).
    """
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine import find_checkpoint, train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    if train_config.patience is not None and not val_split:
        raise UserError("--patience needs --val-split (early stopping watches the validation mAP)")
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if init in COCO_INITS:
        backbone, fpn, weights = COCO_INITS[init][0], True, "none"  # every backbone tensor comes from COCO
    cfg = None
    if resume and (out / "config.json").is_file():
        try:
            cfg = _model_config_from(out)
            logger.info("resuming with the model configuration recorded in %s", out / "config.json")
        except UserError:
            cfg = None
    if cfg is None:
        cfg, train_config, sources = _new_config(
            ds, dataset_path, split, train_config, sources, backbone=backbone, weights=weights, fpn=fpn, head=head,
            anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios, auto_anchors=auto_anchors, min_size=min_size,
            max_size=max_size, train_sizes=train_sizes, model_overrides=model_overrides, fit=fit,
            fit_schedule=fit_schedule)
    elif list(cfg.classes) != list(ds.classes):
        raise UserError(f"{out}: the checkpoint was trained on classes {cfg.classes}, this split has {ds.classes}")
    seed_everything(train_config.seed)  # the new layers' initialisation
    model = build_model(cfg, weights=weights)
    if init and not (resume and find_checkpoint(out) is not None):
        cfg.trained_on["init"] = load_init(model, init_state(init), init)
    evaluate_fn = None
    if val_split:
        val = load_dataset(dataset_path, val_split, images, classes=list(ds.classes))
        evaluate_fn = make_evaluate_fn(val, ds.classes)
    train_ds = DetectionDataset(ds, flip=True, seed=train_config.seed, fit=decode_size(cfg),
                                color_jitter=cfg.color_jitter)
    summary = train(model, train_ds, out, train_config, resume=resume, model_config=cfg, evaluate_fn=evaluate_fn,
                    command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary


# ----------------------------------------------------------------------------------------------
# what the registry knows of Faster R-CNN
# ----------------------------------------------------------------------------------------------

class _WholeDetector(nn.Module):
    """The whole detector on one image: ``(3, H, W)`` in ``[0, 1]`` -> boxes ``(n, 4)`` pixels, scores, labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _whole(run) -> tuple[nn.Module, tuple, dict[str, Any], FasterRCNNConfig, dict[str, Any]]:
    """The export of the whole detector (:class:`rcnn_cli.method.Export`); no score threshold inside the graph."""
    model, cfg = load_model(run.root, "cpu")
    heads = model.roi_heads
    detect = {"score_threshold": float(heads.score_thresh), "nms": float(heads.nms_thresh),
              "top_k": int(heads.detections_per_img),
              "mean": list(model.transform.image_mean), "std": list(model.transform.image_std)}
    heads.score_thresh = 0.0
    example = (torch.rand(3, int(cfg.min_size), int(cfg.min_size) * 4 // 3),)
    return _WholeDetector(model.eval()).eval(), example, detect, cfg, {}


def _trained_layers(run) -> tuple[nn.Module, nn.Module]:
    model, _ = load_model(run.root)
    return model.backbone.body, model.roi_heads.box_head


def _trunk_network(run):
    from rcnn_cli.backends import trunk_export

    return trunk_export(load_model(run.root)[0].backbone.body, run.model["backbone"], f"{NAME} R-CNN")


def _compare_step(c) -> None:
    """``rcnn compare``: training, detection and the RPN's proposal recall (``c``: the compare context)."""
    G, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = {"G": G, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
              "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        overrides = {k: G[k] for k in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                                       "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")}
        overrides.update(box_score_thresh=float(D["score_threshold"]), box_nms_thresh=float(D["nms"]),
                         box_detections_per_img=int(D["top_k"]))
        return train_faster(d.path, d.train_split, run_dir, c.train_config(G), images=d.images,
                            backbone=c.backbone, weights=c.settings["model"]["weights"],
                            head="backbone" if c.backbone in ("vgg16", "alexnet") else "mlp",
                            anchor_sizes=G["anchor_sizes"], aspect_ratios=G["aspect_ratios"],
                            auto_anchors=bool(G["auto_anchors"]), min_size=int(G["min_size"]),
                            max_size=int(G["max_size"]), resume=resume, model_overrides=overrides,
                            command=f"{c.command} ({NAME})", fit=False)  # the budget's settings, exactly

    result = c.train_and_evaluate(NAME, config, run_dir, train,
                                  lambda: FasterRCNNDetector.from_run(run_dir, device=c.device))
    result["recall"] = _rpn_recall(c, run_dir, int(G["rpn_post_nms_top_n_test"]))
    result["status"] = c.status((f"{NAME}-train", f"{NAME}-eval", f"{NAME}-recall"))
    c.results[NAME] = result


def _rpn_recall(c, run_dir: Path, top_n: int) -> dict:
    """The RPN's proposals of the test split as a proposals file, and their recall."""
    d = c.data
    rpn_file = run_dir / f"proposals_{d.test_split}_rpn.h5"

    def fn() -> dict:
        from rcnn_cli.data.inputs import ImageInput
        from rcnn_cli.evaluation.recall import recall_stats
        from rcnn_cli.proposals import ProposalConfig, run_propose

        proposer = rpn_proposer(run_dir, device=c.device, post_nms_top_n=top_n)
        run_propose([ImageInput(r.image_id, r.path) for r in d.test_ds.records], rpn_file, ProposalConfig(min_size=0),
                    proposer=proposer, attrs=rpn_attrs(run_dir, top_n), progress=c.progress,
                    command=f"{c.command} (RPN proposals)")
        return c.recall_summary(recall_stats(d.test_ds, rpn_file))

    return c.st.run(f"{NAME}-recall", {"train": c.st.hashes[f"{NAME}-train"], "split": d.test_split, "top_n": top_n},
                    [rpn_file], fn, clean=[rpn_file, rpn_file.with_name(rpn_file.name + ".config.json")])


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    F = s[NAME]
    sched = f"{F['epochs']} epochs, lr {F['lr']} (x0.1 at epochs {F['lr_steps']}), batch {F['batch_size']}"
    if F.get("max_iters"):
        sched += f", at most {F['max_iters']} iterations"
    return (f"- Faster R-CNN: {resize_text(F, short=False)}; {sched}; anchors "
            f"{'fitted to the training boxes' if F['auto_anchors'] else F['anchor_sizes']} x ratios "
            f"{F['aspect_ratios']}, RPN top-N {F['rpn_pre_nms_top_n_train']}/{F['rpn_post_nms_top_n_train']} "
            f"train, {F['rpn_pre_nms_top_n_test']}/{F['rpn_post_nms_top_n_test']} test")


def _claim(report: Mapping[str, Any]) -> str | None:
    """The lecture: YOLO is faster than Faster R-CNN but not as good."""
    res = report["results"]
    if "yolo" not in report["methods"] or NAME not in report["methods"]:
        return None
    ty = res["yolo"].get("test_seconds_per_image", {}).get("with_proposals")
    tf = res[NAME].get("test_seconds_per_image", {}).get("with_proposals")
    my, mf = res["yolo"].get("mAP", {}).get("voc12"), res[NAME].get("mAP", {}).get("voc12")
    if None in (ty, tf, my, mf) or not tf:
        return None
    return (f"- lecture: YOLO is faster than Faster R-CNN but not as good (paper, VOC 2007: 63.4 vs 73.2 "
            f"mAP). Here: YOLO {ty / tf:.2f}x Faster R-CNN's test time, mAP {100 * my:.1f} vs {100 * mf:.1f}"
            f" (VOC12) -> {'holds' if ty < tf and my < mf else 'does not hold as stated'}.")


_RPN_TOP_N = {"rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 6000,
              "rpn_post_nms_top_n_test": 300}

#: ``rcnn compare``'s settings per budget (``full``: the paper's, 80k iterations x 1 image on VOC 2007
#: trainval, about 16 epochs with the step at 12).
COMPARE_SETTINGS = {
    "quick": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
              "batch_size": 2, "auto_anchors": True, "anchor_sizes": None, "aspect_ratios": [0.5, 1.0, 2.0],
              **_RPN_TOP_N, "max_iters": None},
    "full": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12], "warmup_iters": 100,
             "batch_size": 2, "auto_anchors": False, "anchor_sizes": [128.0, 256.0, 512.0],
             "aspect_ratios": [0.5, 1.0, 2.0], **_RPN_TOP_N, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="Faster R-CNN", detector=FasterRCNNDetector, config=FasterRCNNConfig, legacy=(MODEL_KIND,),
    backbone=_trained_layers, export=Export(network=_trunk_network, whole=_whole, whole_by_default=True),
    compare=CompareEntry(settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe, claim=_claim,
                         input_text=lambda s, result: resize_text(s[NAME]),
                         proposals=lambda s: f"RPN top {s[NAME]['rpn_post_nms_top_n_test']}"))
