"""R-CNN warping, region targets and the features store: values, resume after SIGKILL, shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from rcnn_cli.rcnn import features as F
from rcnn_cli.boxes import iou_matrix
from rcnn_cli.data.inputs import ImageInput, load_dataset
from rcnn_cli.errors import UserError

# Small, fast settings shared by the store tests (EfficientNet-Lite0 ImageNet weights are on disk).
SETTINGS = dict(backbone="efficientnet_lite0", weights="imagenet", warp_size=32, padding=4, batch_size=8,
                max_proposals=12)
CLI_ARGS = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--warp-size", "32", "--padding", "4",
            "--batch-size", "8", "--max-proposals", "12", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is ~10x faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _smooth_image(h: int = 120, w: int = 160, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------ warping


@pytest.mark.parametrize("box,max_tol,mean_tol", [
    ((20.3, 15.7, 40.9, 35.2), 0.006, 0.002),     # enlarged ~1.6x: plain bilinear, same as PIL (uint8 rounding)
    ((20.3, 15.7, 60.9, 55.2), 0.02, 0.004),      # shrunk ~1.3x: 2x2 samples per pixel vs PIL's triangle filter
    ((5.5, 4.25, 150.75, 110.5), 0.08, 0.015),    # shrunk ~4.5x: area average vs PIL's triangle filter
])
def test_warp_matches_pil_crop_and_resize(box, max_tol, mean_tol):
    im = _smooth_image()
    s = 32
    ref = np.asarray(im.resize((s, s), Image.BILINEAR, box=box), np.float32) / 255
    got = F.warp_regions(_tensor(im), torch.tensor([box]), s, padding=0)[0].permute(1, 2, 0).numpy()
    err = np.abs(got - ref)
    assert err.max() < max_tol and err.mean() < mean_tol
    # with context padding the warp equals a PIL crop-and-resize of the enlarged box
    big = tuple(F.enlarge_boxes(torch.tensor([box]), s, 4)[0].tolist())
    if big[0] >= 0 and big[1] >= 0 and big[2] <= im.width and big[3] <= im.height:
        ref = np.asarray(im.resize((s, s), Image.BILINEAR, box=big), np.float32) / 255
        got = F.warp_regions(_tensor(im), torch.tensor([box]), s, padding=4)[0].permute(1, 2, 0).numpy()
        assert np.abs(got - ref).max() < max_tol


def test_context_padding_geometry_hand_case():
    # S=32, p=4: scale 32/24; box (10,20,50,100): centre (30,60), half sizes (20,40)*4/3
    big = F.enlarge_boxes(torch.tensor([[10.0, 20.0, 50.0, 100.0]]), 32, 4)[0]
    assert torch.allclose(big, torch.tensor([30 - 80 / 3, 60 - 160 / 3, 30 + 80 / 3, 60 + 160 / 3]), atol=1e-4)
    # A 64x64 image that is 1 inside (16,16,48,48) and -1 elsewhere; S=32, p=8 -> enlarged box is the
    # whole image and the original box lands exactly on warped pixels 8..23.
    img = -torch.ones(3, 64, 64)
    img[:, 16:48, 16:48] = 1
    crop = F.warp_regions(img, torch.tensor([[16.0, 16.0, 48.0, 48.0]]), 32, 8)[0]
    expected = -torch.ones(32, 32)
    expected[8:24, 8:24] = 1
    assert torch.equal(crop[0], expected) and torch.equal(crop[2], expected)


def test_outside_the_image_is_zero_after_normalisation():
    img = torch.full((3, 64, 64), 2.5)  # a normalised image, constant
    # box at the corner; S=32, p=8 -> enlarged (-8,-8,24,24): one warped pixel per image pixel
    crop = F.warp_regions(img, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 32, 8)[0]
    expected = torch.zeros(32, 32)
    expected[8:, 8:] = 2.5
    assert torch.allclose(crop[1], expected)
    # a box entirely outside gives all zeros
    assert float(F.warp_regions(img, torch.tensor([[100.0, 100.0, 140.0, 150.0]]), 32, 8).abs().max()) == 0.0


def test_region_targets_hand_case():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    labels = np.array([2, 1])
    props = np.array([[0, 0, 10, 5], [20, 20, 30, 40], [50, 50, 60, 60], [5, 0, 25, 10]], np.float32)
    r = F.region_targets(props, gt, labels)
    assert r["boxes"].shape == (6, 4) and np.array_equal(r["boxes"][:2], gt)
    assert r["gt"].tolist() == [True, True, False, False, False, False]
    np.testing.assert_allclose(r["overlaps"], [1, 1, 0.5, 0.5, 0, 50 / 250], rtol=1e-6)
    assert r["labels"].tolist() == [2, 1, 2, 1, 0, 2]
    assert r["gt_index"].tolist() == [0, 1, 0, 1, -1, 0]
    empty = F.region_targets(props, np.zeros((0, 4)), np.zeros(0))
    assert empty["overlaps"].tolist() == [0] * 4 and empty["labels"].tolist() == [0] * 4
    assert empty["gt_index"].tolist() == [-1] * 4


def test_extractor_rounds_through_float16_and_is_deterministic():
    fx = F.FeatureExtractor(**{k: v for k, v in SETTINGS.items() if k != "max_proposals"}, device="cpu")
    im = _smooth_image()
    boxes = np.array([[10, 10, 60, 70], [0, 0, 160, 120], [100, 50, 150, 110]], np.float32)
    a, b = fx(im, boxes), fx(im, boxes[1:])
    assert a.shape == (3, 1280) and a.dtype == np.float32
    assert np.array_equal(a.astype(np.float16).astype(np.float32), a)
    assert np.array_equal(a[1:], b)  # a region's features do not depend on the others in the batch
    assert fx.config["weights_id"] == "efficientnet_lite0:imagenet-offline"
    assert fx.config["warp_size"] == 32 and fx.config["dtype"] == "float16"


# ---------------------------------------------------------------------------------- the store


def _proposer(image: Image.Image) -> np.ndarray:
    w, h = image.size
    rng = np.random.default_rng(w * 7 + h)
    xy = rng.uniform(0, [w - 25, h - 25], size=(30, 2))
    wh = rng.uniform(20, 80, size=(30, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)


@pytest.fixture(scope="module")
def store(shapes_root, tmp_path_factory):
    """Proposals for the shapes trainval split and one uninterrupted extraction."""
    from rcnn_cli.proposals import run_propose

    tmp = tmp_path_factory.mktemp("features")
    ds = load_dataset(shapes_root, "trainval")
    props = tmp / "props.h5"
    run_propose([ImageInput(r.image_id, r.path) for r in ds.records], props, proposer=_proposer, progress=False,
                attrs={"method": "random"})
    full = tmp / "full.h5"
    F.run_extract_features(ds, props, full, F.FeatureConfig(**SETTINGS), progress=False)
    return {"ds": ds, "props": props, "full": full, "tmp": tmp}


def _contents(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with F.load_features(path) as r:
        return {i: r.get(i) for i in r.ids()}


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for image_id in a:
        for key, value in a[image_id].items():
            assert np.array_equal(value, b[image_id][key]), (image_id, key)


def test_store_contents_and_targets(store):
    from rcnn_cli.proposals import load

    ds = store["ds"]
    with F.load_features(store["full"]) as r, load(store["props"]) as pr:
        assert r.ids() == [rec.image_id for rec in ds.records]
        assert r.classes == ds.classes and r.attrs["labelled"] is True
        assert r.attrs["backbone"] == "efficientnet_lite0" and r.attrs["warp_size"] == 32
        assert r.attrs["padding"] == 4 and r.attrs["dtype"] == "float16" and r.attrs["layer"] == "pool"
        fx = F.FeatureExtractor(**{k: v for k, v in SETTINGS.items() if k != "max_proposals"}, device="cpu")
        for rec in ds.records[:3]:
            item = r.get(rec.image_id)
            gt_boxes, gt_labels = ds.training_targets(rec, *r.image_size(rec.image_id))
            m = len(gt_boxes)
            assert m > 0
            props = pr.boxes(rec.image_id)[:12]
            assert np.array_equal(item["boxes"], np.concatenate([gt_boxes, props]))
            assert item["gt"].tolist() == [True] * m + [False] * len(props)
            np.testing.assert_allclose(item["overlaps"][:m], 1.0)
            assert item["labels"][:m].tolist() == gt_labels.tolist()
            assert item["gt_index"][:m].tolist() == list(range(m))
            iou = iou_matrix(props, gt_boxes)
            np.testing.assert_allclose(item["overlaps"][m:], iou.max(1), rtol=1e-6)
            hit = iou.max(1) > 0
            assert np.array_equal(item["labels"][m:][hit], gt_labels[iou.argmax(1)][hit])
            assert (item["labels"][m:][~hit] == 0).all() and (item["gt_index"][m:][~hit] == -1).all()
            assert item["features"].dtype == np.float16 and item["features"].shape == (m + len(props), 1280)
            from rcnn_cli.data.images import load_image

            direct = fx(load_image(rec.path), item["boxes"])
            assert np.array_equal(item["features"].astype(np.float32), direct)
        with h5py.File(store["full"], "r") as f:
            g = next(iter(f["images"].values()))
            assert g["features"].chunks is not None
    assert Path(str(store["full"]) + ".config.json").is_file()
    assert not Path(str(store["full"]) + ".parts").exists()


def test_resume_after_sigkill_equals_uninterrupted_run(store):
    out = store["tmp"] / "killed.h5"
    cmd = [sys.executable, "-m", "rcnn_cli", "extract-features", str(store["ds"].root), "--split", "trainval",
           "--proposals", str(store["props"]), "--out", str(out), "--checkpoint-seconds", "0", *CLI_ARGS]
    parts = Path(str(out) + ".parts")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.h5"))) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    if not killed:
        pytest.skip(f"the run ended before it could be killed (rc {proc.returncode})")
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the final file is only ever created complete
    n_parts = len(list(parts.glob("part-*.h5")))
    assert 3 <= n_parts < 8
    for p in parts.glob("part-*.h5"):  # every published part opens
        with h5py.File(p, "r") as f:
            assert len(f["images"]) == 1
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert f"{8 - n_parts} image(s) extracted" in done.stderr.replace("\n", " ") or "already done" in done.stderr
    _assert_same(_contents(out), _contents(store["full"]))
    assert not parts.exists()


def test_two_shards_merged_equal_one_run(store):
    tmp, ds = store["tmp"], store["ds"]
    a, b = tmp / "shard0.h5", tmp / "shard1.h5"
    F.run_extract_features(ds, store["props"], a, F.FeatureConfig(**SETTINGS), shard="0/2", progress=False)
    F.run_extract_features(ds, store["props"], b, F.FeatureConfig(**SETTINGS), shard=(1, 2), progress=False)
    with F.load_features(a) as r:
        assert r.ids() == [rec.image_id for rec in ds.records][0::2] and r.attrs["shard"] == "0/2"
    merged = tmp / "merged.h5"
    summary = F.merge_features([b, a], merged)
    assert summary["images"] == 8
    _assert_same(_contents(merged), _contents(store["full"]))
    # a rerun of a finished shard does nothing and changes nothing
    s = F.run_extract_features(ds, store["props"], a, F.FeatureConfig(**SETTINGS), shard="0/2", progress=False)
    assert s["extracted"] == 0 and s["done_before"] == 4


def test_mismatched_settings_are_refused(store):
    tmp, ds = store["tmp"], store["ds"]
    other = tmp / "other.h5"
    settings = dict(SETTINGS, padding=8)
    F.run_extract_features(ds, store["props"], other, F.FeatureConfig(**settings), shard="0/4", progress=False)
    with pytest.raises(UserError, match="padding 4 vs 8"):
        F.merge_features([store["full"], other], tmp / "bad.h5")
    assert not (tmp / "bad.h5").exists()
    # rerunning into an existing file with other settings: one-line refusal, file untouched
    before = _contents(other)
    with pytest.raises(UserError, match="other settings") as e:
        F.run_extract_features(ds, store["props"], other, F.FeatureConfig(**SETTINGS), progress=False)
    assert "\n" not in str(e.value)
    _assert_same(_contents(other), before)
    with pytest.raises(UserError, match="K/N"):
        F.parse_shard("1-2")
    with pytest.raises(UserError):
        F.parse_shard("2/2")


def test_cli_merge_refusal_and_unlabelled_images(store, tmp_path):
    from rcnn_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(["merge-features", str(store["full"]), str(store["tmp"] / "other.h5"), "--out", str(tmp_path / "m.h5")])
    assert e.value.code == 2
    # unlabelled images: no gt rows, overlaps 0, labels 0
    images = [rec.path for rec in store["ds"].records[:2]]
    out = tmp_path / "plain.h5"
    F.run_extract_features([ImageInput(p.stem, p) for p in images], store["props"], out, F.FeatureConfig(**SETTINGS),
                           progress=False)
    with F.load_features(out) as r:
        assert r.attrs["labelled"] is False and r.classes == []
        item = r.get(r.ids()[0])
        assert not item["gt"].any() and (item["overlaps"] == 0).all() and (item["gt_index"] == -1).all()
        assert len(item["boxes"]) == 12


# ------------------------------------------------------------------ runtimes (channels_last, ONNX Runtime)


def test_runtimes_give_the_same_features_and_cache_the_graph(tmp_path, caplog):
    import logging

    pytest.importorskip("onnxruntime")
    from PIL import Image

    from rcnn_cli.rcnn.features import FeatureExtractor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    boxes = np.array([[0, 0, 60, 50], [20, 10, 120, 90], [5, 40, 50, 95]], np.float32)
    base = dict(warp_size=32, padding=3, device="cpu", dtype="float32", weights="none")
    eager = FeatureExtractor(**base)  # torch, channels_last
    reference = FeatureExtractor(**base)
    from rcnn_cli.rcnn.features import warp_regions
    from rcnn_cli.backbones import normalize

    with torch.no_grad():  # plain NCHW eager, the network as built
        crops = warp_regions(reference.prepare(image), torch.from_numpy(boxes), 32, 3)
        nchw = build_model_nchw(reference)(crops).numpy()
    np.testing.assert_allclose(eager(image, boxes), nchw, atol=1e-4)
    ort = FeatureExtractor(**base, runtime="onnxruntime", cache_dir=tmp_path)
    np.testing.assert_allclose(ort(image, boxes), nchw, atol=1e-4)
    graphs = list(tmp_path.glob("*.onnx"))
    assert len(graphs) == 1 and ort.runtime == "onnxruntime"
    stamp = graphs[0].stat().st_mtime_ns
    FeatureExtractor(**base, runtime="onnxruntime", cache_dir=tmp_path)
    assert graphs[0].stat().st_mtime_ns == stamp  # reused, not exported again
    FeatureExtractor(**dict(base, warp_size=40), runtime="onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # another input size: another graph
    graphs[0].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="rcnn"):
        again = FeatureExtractor(**base, runtime="onnxruntime", cache_dir=tmp_path)
    assert any("exporting it again" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(again(image, boxes), nchw, atol=1e-4)


def build_model_nchw(fx):
    import copy

    model = copy.deepcopy(fx.model).to(memory_format=torch.contiguous_format)
    return model.eval()


def test_a_runtime_that_is_not_installed_is_one_line(monkeypatch):
    import sys

    from rcnn_cli import backends as runtimes

    for module in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # hidden from import
    with pytest.raises(UserError, match=r"--runtime openvino: needs openvino, not installed \(pip install 'rcnn-cli\[openvino\]'\)"):
        runtimes.resolve_runtime("openvino")
    assert runtimes.resolve_runtime("auto") == "torch"
    with pytest.raises(UserError, match="choose torch"):
        runtimes.resolve_runtime("tensorrt")


def test_auto_runtime_needs_the_exporter_too(monkeypatch, caplog):
    """onnxruntime installed without onnx (pip install rcnn-cli onnxruntime): auto falls back with one
    line; the explicit runtime names what to install."""
    import logging
    import sys

    from rcnn_cli import backends as runtimes

    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    caplog.set_level(logging.INFO, logger="rcnn")
    assert runtimes.resolve_runtime("auto") == "torch"
    assert "onnxruntime is installed but onnx is not (pip install 'rcnn-cli[onnx]')" in caplog.text
    with pytest.raises(UserError, match=r"--runtime onnxruntime: needs onnx, not installed \(pip install 'rcnn-cli\[onnx\]'\)"):
        runtimes.resolve_runtime("onnxruntime")
    monkeypatch.delitem(sys.modules, "onnx")
    monkeypatch.delitem(sys.modules, "openvino")
    assert runtimes.resolve_runtime("auto") in ("openvino", "onnxruntime")


def test_openvino_runs_the_same_graph_in_float32(tmp_path):
    pytest.importorskip("openvino")
    from PIL import Image

    from rcnn_cli.rcnn.features import FeatureExtractor

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    boxes = np.array([[0, 0, 60, 50], [20, 10, 90, 70]], np.float32)
    base = dict(warp_size=32, padding=3, device="cpu", dtype="float32", weights="none")
    ov = FeatureExtractor(**base, runtime="openvino", cache_dir=tmp_path)
    assert ov.runtime == "openvino"
    np.testing.assert_allclose(ov(image, boxes), FeatureExtractor(**base)(image, boxes), atol=1e-4)
    # the 2x2 grid layer exports too (TF "same" padding leaves the map's size to run time) and equals
    # torch's adaptive average pooling, on an even (4 x 4 at warp 128) and an odd (3 x 3 at 96) map
    for warp in (128, 96):
        grid = dict(base, layer="grid", warp_size=warp, padding=warp // 10)
        ov = FeatureExtractor(**grid, runtime="openvino", cache_dir=tmp_path)
        np.testing.assert_allclose(ov(image, boxes), FeatureExtractor(**grid)(image, boxes), atol=1e-4)
    assert FeatureExtractor(**grid, runtime="auto", cache_dir=tmp_path).runtime == "openvino"
    assert FeatureExtractor(**dict(base, backbone="hog"), runtime="auto").runtime == "torch"


def test_grid_pool_equals_adaptive_average_pooling():
    import torch.nn.functional as F

    from rcnn_cli.backbones import grid_pool

    for h, w in [(4, 4), (7, 7), (5, 3), (1, 1)]:  # odd sizes: torch's cells overlap by one row
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        torch.testing.assert_close(grid_pool(x, 2), F.adaptive_avg_pool2d(x, 2), atol=1e-6, rtol=0)


def test_hog_features_are_opencvs_dalal_triggs_descriptor():
    import cv2

    from rcnn_cli.backbones import build_feature_extractor, build_trunk

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net = build_feature_extractor("hog", window=64)
    assert net.out_dim == 7 * 7 * 4 * 9 == 1764  # 7x7 blocks of 2x2 cells, 9 orientations
    got = net(x).numpy()
    hog = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)
    crop = np.ascontiguousarray((x[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()[:, :, ::-1])
    np.testing.assert_allclose(got[1], hog.compute(crop).reshape(-1), atol=1e-6)
    assert build_feature_extractor("hog", window=32).out_dim == 3 * 3 * 36
    with pytest.raises(UserError, match="multiple of its 8-pixel cells"):
        build_feature_extractor("hog", window=60)
    with pytest.raises(UserError, match="no convolutional trunk"):
        build_trunk("hog")
