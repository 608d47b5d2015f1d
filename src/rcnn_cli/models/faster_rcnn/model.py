"""Building the Faster R-CNN network from its configuration (torchvision's ``FasterRCNN`` on a trunk of the
backbone registry, optionally with a feature pyramid), loading a trained one, and COCO starting points."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.models.faster_rcnn.config import FasterRCNNConfig, FPN_BACKBONES, MODEL_VERSION, NAME


def make_anchor_generator(sizes: Sequence[float], aspect_ratios: Sequence[float], levels: int = 1,
                          every_size: bool = False):
    """torchvision ``AnchorGenerator``: with one level, every size x every ratio at each cell;
    with ``levels`` > 1 (FPN), one size per level and every ratio; ``every_size`` (MobileNetV3's
    pyramid): every size x every ratio at each level.

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
        return AnchorGenerator(sizes=(sizes,) * levels, aspect_ratios=(ratios,) * levels)
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


def _frozen_modules(cfg: FasterRCNNConfig) -> int:
    """The leading trunk modules kept frozen: ``cfg.frozen_modules``, else the backbone registry's."""
    from rcnn_cli.backbones import get_spec

    return get_spec(cfg.backbone).frozen_modules if cfg.frozen_modules is None else int(cfg.frozen_modules)


def _fpn_backbone(cfg: FasterRCNNConfig, weights: str) -> nn.Module:
    """The feature-pyramid backbone of ``cfg`` (frozen batch norms): built here on the registry's pyramid
    trunk (EfficientNet-Lite0: the registry's leading layers frozen, ``LastLevelMaxPool`` adding P6), or
    torchvision's (ResNet-50, MobileNetV3: the last 3 stages trainable, as its COCO detectors) with the
    registry network's ``weights`` copied into the body."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.ops.misc import FrozenBatchNorm2d

    name, pyramid = cfg.backbone, cfg.pyramid
    if pyramid.prefix is None:
        from rcnn_cli.backbones import build_pyramid_trunk, freeze_leading

        trunk, layers, channels = build_pyramid_trunk(name, weights, freeze_bn=True)
        freeze_leading(trunk, _frozen_modules(cfg))
        return BackboneWithFPN(trunk, layers, channels, pyramid.channels, extra_blocks=LastLevelMaxPool())
    if name == "resnet50":
        fpn = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=3, norm_layer=FrozenBatchNorm2d)
    else:
        fpn = mobilenet_backbone(backbone_name=name, weights=None, fpn=True, trainable_layers=3,
                                 norm_layer=FrozenBatchNorm2d)
    if weights != "none":
        from rcnn_cli.backbones import build_feature_extractor

        src = build_feature_extractor(name, weights).net.state_dict()
        body = fpn.body.state_dict()
        prefix = pyramid.prefix
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

    from rcnn_cli.backbones import build_head, build_trunk, freeze_leading

    num_classes = len(cfg.classes) + 1
    name = cfg.backbone
    roi_size = int(cfg.roi_output_size)
    box_head = None
    representation = int(cfg.representation_size)
    if cfg.fpn:
        backbone = _fpn_backbone(cfg, str(weights))
        featmap_names = cfg.pyramid.featmap_names
        anchor_gen = make_anchor_generator(cfg.anchor_sizes, cfg.aspect_ratios, levels=cfg.pyramid.levels,
                                           every_size=cfg.pyramid.every_size)
    else:
        body, channels, _stride = build_trunk(name, weights, freeze_bn=True)
        freeze_leading(body, _frozen_modules(cfg))
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
                        f"({' or '.join(b for b, _, _ in COCO_INITS.values())})")
    model.load_state_dict(loaded, strict=False)
    logger.info("--init %s: %d of %d tensors loaded; the box predictor starts anew for %d classes", what,
                len(loaded), len(wanted), len(model.rcnn_config.classes))
    return {"init": what, "tensors_loaded": len(loaded), "tensors": len(wanted),
            "not_loaded": sorted(k for k in wanted if k not in loaded)[:20]}
