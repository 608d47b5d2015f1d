"""Faster R-CNN: anchors, RPN target assignment, anchor fitting, a tiny overfit, detect, RPN proposals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.images import load_image
from rcnn_cli.config import parse_floats
from rcnn_cli.detector import DetectConfig
from rcnn_cli.errors import UserError
from rcnn_cli.models import faster_rcnn as fr

SMALL = dict(min_size=128, max_size=128, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
             rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)


# ------------------------------------------------------------------------------------------------
# anchors


def _anchors(gen, image_hw: tuple[int, int], feature_hw: tuple[int, int]) -> torch.Tensor:
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, *image_hw), [image_hw])
    return gen(images, [torch.zeros(1, 8, *feature_hw)])[0]


def test_anchors_for_a_known_feature_map():
    gen = fr.make_anchor_generator([32, 64], [0.5, 1.0, 2.0])
    a = _anchors(gen, (64, 96), (4, 6))  # stride 16 both ways
    assert a.shape == (4 * 6 * 6, 4)  # 24 cells x (3 ratios x 2 sizes)
    # order: cell (row-major), then ratio, then size; cell (y=1, x=2) is index 1 * 6 + 2 = 8
    cell = a[8 * 6:(8 + 1) * 6]
    centres = (cell[:, :2] + cell[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([[32.0, 16.0]]).expand(6, 2))
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    # ratio 0.5 (h/w), size 32: w = 32 / sqrt(0.5) = 45.25 -> +-23 (rounded), h = 22.6 -> +-11
    assert cell[0].tolist() == [32 - 23, 16 - 11, 32 + 23, 16 + 11]
    # ratio 1: square anchors of the exact sizes
    assert (w[2].item(), h[2].item(), w[3].item(), h[3].item()) == (32.0, 32.0, 64.0, 64.0)
    # ratio 2: tall; area stays about size^2
    assert h[5] > w[5] and math.isclose((w[5] * h[5]).item(), 64 * 64, rel_tol=0.03)
    # first cell is centred on (0, 0) (torchvision's convention)
    assert torch.allclose((a[:6, :2] + a[:6, 2:]) / 2, torch.zeros(6, 2))


def test_model_uses_paper_anchor_defaults():
    cfg = fr.default_config(["a"])
    assert cfg.anchor_sizes == [128.0, 256.0, 512.0] and cfg.aspect_ratios == [0.5, 1.0, 2.0]
    assert (cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train) == (12000, 2000)
    assert (cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test) == (6000, 300)
    assert cfg.rpn_nms_thresh == 0.7 and (cfg.min_size, cfg.max_size) == (600, 1000)
    with pytest.raises(UserError, match="unknown Faster R-CNN setting"):
        fr.default_config(["a"], anchor_size=[1])
    assert fr.default_config(["a"], backbone="resnet50", fpn=True).anchor_sizes == [32.0, 64.0, 128.0, 256.0, 512.0]
    with pytest.raises(UserError, match="give 5 anchor sizes"):
        fr.default_config(["a"], backbone="resnet50", fpn=True, anchor_sizes=[32, 64, 128])
    with pytest.raises(UserError, match="give 4 anchor sizes"):
        fr.default_config(["a"], fpn=True, anchor_sizes=[32, 64, 128])
    with pytest.raises(UserError, match="comma-separated"):
        parse_floats("128,x", "--anchor-sizes")
    assert parse_floats("32, 64,128", "--anchor-sizes") == [32.0, 64.0, 128.0]


def test_lite0_pyramid_levels_and_their_anchors():
    """EfficientNet-Lite0 with --fpn: P3-P6 (strides 8, 16, 32, 64) of the pyramid's channels, one anchor
    size per level (x 3 ratios) centred on that level's stride; the RoI pooling reads P3-P5."""
    cfg = fr.default_config(["a"], fpn=True, min_size=128, max_size=192, anchor_sizes=[20, 40, 80, 160])
    assert cfg.anchors_follow_data and cfg.pyramid.levels == 4
    model = fr.build_model(cfg, "none").eval()
    feats = model.backbone(torch.zeros(1, 3, 128, 192))
    channels = cfg.pyramid.channels
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "0": (1, channels, 16, 24), "1": (1, channels, 8, 12), "2": (1, channels, 4, 6), "pool": (1, channels, 2, 3)}
    from torchvision.models.detection.image_list import ImageList

    anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, 128, 192), [(128, 192)]), list(feats.values()))[0]
    counts = [16 * 24, 8 * 12, 4 * 6, 2 * 3]
    assert anchors.shape == (3 * sum(counts), 4)
    start = 0
    for level, (cells, size, stride) in enumerate(zip(counts, [20, 40, 80, 160], [8, 16, 32, 64])):
        block = anchors[start:start + 3 * cells]
        square = block[1]  # the first cell's ratio-1 anchor
        assert square.tolist() == [-size / 2, -size / 2, size / 2, size / 2], level
        second = block[3:6]  # the next cell along x: shifted by the level's stride
        assert torch.equal(second - block[:3], torch.tensor([[stride, 0, stride, 0]] * 3, dtype=block.dtype))
        start += 3 * cells
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    resnet = fr.default_config(["a"], backbone="resnet50", fpn=True)
    assert not resnet.anchors_follow_data  # torchvision's COCO pyramid keeps its anchors unless --auto-anchors


def test_multi_scale_training_draws_sizes_and_tests_at_min_size():
    cfg = fr.default_config(["a"], min_size=96, max_size=400, train_min_sizes=[64, 96, 128])
    assert fr.transform_min_sizes(cfg) == (64, 128, 96)  # the test size last: torchvision's eval size
    assert fr.transform_min_sizes(fr.default_config(["a"], min_size=96)) == 96
    model = fr.build_model(cfg, weights="none")
    image = torch.rand(3, 60, 80)
    model.train()
    torch.manual_seed(0)
    seen = {tuple(model.transform([image])[0].image_sizes[0]) for _ in range(40)}
    assert seen == {(64, 85), (96, 128), (128, 170)}  # shorter side 64/96/128, aspect 4:3 kept
    model.eval()
    assert model.transform([image])[0].image_sizes[0] == (96, 128)
    with pytest.raises(UserError, match="at least 16"):
        fr.default_config(["a"], train_min_sizes=[8, 96])


def test_anchor_fitting_is_class_balanced_and_follows_the_resize():
    recs = []
    for i in range(20):  # 20 images with 5 small boxes each (class a), 1 image with 1 large box (class b)
        boxes = np.array([[j * 15, 0, j * 15 + 10, 10] for j in range(5)], np.float32)
        recs.append(ImageRecord(f"a{i}", Path("x.jpg"), 100, 100, boxes, ["a"] * 5))
    recs.append(ImageRecord("b", Path("y.jpg"), 100, 100, np.array([[0, 0, 100, 100]], np.float32), ["b"]))
    recs.append(ImageRecord("bad", Path("z.jpg"), 100, 100, np.array([[5, 5, 5, 9]], np.float32), ["a"]))  # zero-area
    ds = Dataset(Path("."), "train", ["a", "b"], recs)
    # images resized by 2 (shorter side 100 -> 200): sizes 20 (100 boxes) and 200 (one box) weigh the same
    assert fr.fit_anchor_sizes(ds, n=2, min_size=200, max_size=1000) == [20.0, 200.0]
    sizes = fr.fit_anchor_sizes(ds, n=3, min_size=200, max_size=1000)
    assert sizes[0] == 20.0 and sizes[2] == 200.0 and 20 < sizes[1] < 200
    # max_size caps the resize: 100 px -> at most 150 px
    assert fr.fit_anchor_sizes(ds, n=2, min_size=600, max_size=150) == [15.0, 150.0]


# ------------------------------------------------------------------------------------------------
# RPN target assignment


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return fr.build_model(fr.default_config(["a", "b"], **SMALL, anchor_sizes=[32, 64, 96]), weights="none")


def test_rpn_target_assignment_hand_made(small_model):
    rpn = small_model.rpn
    anchors = torch.tensor([
        [0, 0, 100, 100],      # IoU 1.0 with gt0 -> positive
        [0, 0, 100, 80],       # IoU 0.8 -> positive (>= 0.7)
        [0, 0, 100, 50],       # IoU 0.5 -> ignored (between 0.3 and 0.7)
        [200, 200, 300, 300],  # IoU 0 -> negative
        [0, 0, 100, 25],       # IoU 0.25 -> negative (< 0.3)
        [400, 400, 440, 480],  # IoU 0.5 with gt1, but gt1's best anchor -> positive (low-quality match)
    ], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 100, 100], [400, 400, 440, 440]], dtype=torch.float32)
    labels, matched = rpn.assign_targets_to_anchors([anchors], [{"boxes": gt}])
    assert labels[0].tolist() == [1.0, 1.0, -1.0, 0.0, 0.0, 1.0]
    assert matched[0][5].tolist() == [400, 400, 440, 440] and matched[0][1].tolist() == [0, 0, 100, 100]
    # regression targets are the package's box coding (rcnn_cli.boxes wraps the same BoxCoder)
    from rcnn_cli.boxes import encode

    t = rpn.box_coder.encode_single(matched[0], anchors)
    assert torch.allclose(t, encode(matched[0], anchors, (1, 1, 1, 1)))
    assert torch.allclose(t[5], torch.tensor([0.0, -0.25, 0.0, math.log(0.5)]), atol=1e-6)
    # an image without objects: every anchor is negative
    labels, _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0.0] * 6
    # the sampler keeps at most 256 anchors, half positive at most
    lab = torch.cat([torch.ones(300), torch.zeros(1000)])
    pos, neg = rpn.fg_bg_sampler([lab])
    assert int(pos[0].sum()) == 128 and int(neg[0].sum()) == 128


def test_four_losses_and_empty_image(small_model):
    small_model.train()
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = small_model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    small_model.eval()


# ------------------------------------------------------------------------------------------------
# tiny overfit (engine), detection, loading, RPN proposals


@pytest.fixture(scope="module")
def overfit_run(shapes_root, tmp_path_factory):
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine import TrainConfig, train
    from rcnn_cli.device import seed_everything

    ds = load_dataset(shapes_root, "trainval")
    rec = next(r for r in ds.records if len(r.labels) == 1)  # one object: precise boxes within 240 iterations
    one = Dataset(ds.root, "one", ds.classes, [rec] * 60)  # 60 per epoch: few checkpoints
    cfg = fr.default_config(ds.classes, **SMALL, anchor_sizes=fr.fit_anchor_sizes(one, 3, 128, 128))
    seed_everything(0)
    model = fr.build_model(cfg, weights="imagenet")
    out = tmp_path_factory.mktemp("faster_run")
    summary = train(model, DetectionDataset(one, flip=False), out,
                    TrainConfig(epochs=10, lr=0.02, batch_size=1, warmup_iters=10, max_iters=240, progress=False,
                                log_every=50), model_config=cfg)
    return out, rec, ds, summary


def test_tiny_overfit_reaches_near_perfect_detections(overfit_run):
    from rcnn_cli.boxes import iou_matrix

    out, rec, ds, summary = overfit_run
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(lines[0])
    assert summary["iterations"] == 240 and summary["losses"]["loss"] < 0.3 * lines[0]["loss"]
    assert summary["losses"]["loss_objectness"] < 0.05  # the RPN has learnt the objects
    det = fr.FasterRCNNDetector.from_run(out, device="cpu")(load_image(rec.path), rec.image_id)
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
    assert det.scores[0] > 0.9 and det.labels[0] == rec.labels[0]  # one confident detection of the right class
    assert iou_matrix(det.boxes[:1], rec.boxes)[0, 0] > 0.9  # tightly on the object
    assert (det.scores[1:] < 0.3).all()  # and nothing else is confident
    from rcnn_cli.evaluation import evaluate

    one = Dataset(ds.root, "one", ds.classes, [rec])
    assert evaluate(one, {rec.image_id: det}, metric="voc12")["mAP"] == pytest.approx(1.0)


def test_detector_matches_the_torchvision_forward_and_settings(overfit_run):
    out, rec, _, _ = overfit_run
    detector = fr.FasterRCNNDetector.from_run(out, device="cpu", config=DetectConfig(0.01, 0.5, 3), rpn_top_n=50)
    assert detector.settings()["top_k"] == 3 and detector.settings()["rpn_post_nms_top_n"] == 50
    flags = fr.FasterRCNNDetector.from_run(out, device="cpu", config={"score_threshold": 0.2, "nms": None, "top_k": None})
    assert (flags.config.score_threshold, flags.config.nms) == (0.2, 0.5)  # the run's NMS where --nms is not given
    assert flags.model.roi_heads.nms_thresh == 0.5 and flags.model.roi_heads.score_thresh == 0.2
    image = load_image(rec.path).resize((257, 257))  # another size: boxes come back in its pixels
    det = detector(image, "x")
    assert set(det.timings) == {"network", "post"} and all(v >= 0 for v in det.timings.values())
    from rcnn_cli.data.images import to_tensor

    with torch.inference_mode():  # twice the network's 128 px: the detector shrinks it by 2 first (129 px)
        ref = detector.model([to_tensor(image.reduce(2))])[0]
    assert 1 <= len(det) <= 3 and np.allclose(det.boxes, np.minimum(2 * ref["boxes"].numpy(), 257), atol=1e-4)
    assert np.allclose(det.scores, ref["scores"].numpy()) and (det.scores >= 0.01).all()
    from rcnn_cli.boxes import iou_matrix

    assert iou_matrix(det.boxes[:1] / 2, rec.boxes)[0, 0] > 0.85  # the object, in the 2x image's pixels


def test_export_backbone_takes_the_trained_trunk(overfit_run, tmp_path):
    """An MLP-head Faster R-CNN trains only the trunk: exported, the trunk is the run's, the rest ImageNet's."""
    from rcnn_cli.backbones import build_feature_extractor, build_trunk
    from rcnn_cli.workflows.export import export_backbone

    out, _, _, _ = overfit_run
    info = export_backbone(out, tmp_path / "w.safetensors")
    assert info["trained_layers"].startswith("trunk (")
    model, _ = fr.load_model(out)
    trunk, _, _ = build_trunk("efficientnet_lite0", tmp_path / "w.safetensors")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(trunk.eval()(x), model.backbone(x), atol=1e-5)
    exported = build_feature_extractor("efficientnet_lite0", tmp_path / "w.safetensors").net
    imagenet = build_feature_extractor("efficientnet_lite0", "imagenet").net
    assert torch.equal(exported.conv_head.weight, imagenet.conv_head.weight)
    block = "blocks.4.0.conv_pw.weight"  # trained by the run (the stem is frozen in Faster R-CNN)
    assert not torch.equal(exported.get_parameter(block), imagenet.get_parameter(block))


def test_load_errors_are_one_line(overfit_run, tmp_path):
    out, _, _, _ = overfit_run
    with pytest.raises(UserError, match="model directory not found"):
        fr.load_model(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    record = json.loads((out / "config.json").read_text())
    record["model"]["classes"] = ["a", "b"]  # 3 outputs instead of 5
    (bad / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"weights do not match the model in config.json \(0 missing, 0 unexpected, 4 of another shape"):
        fr.load_model(bad)
    record["kind"] = "fast"
    (bad / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="not a 'faster' one"):
        fr.load_model(bad)


def test_rpn_proposer_boxes_in_original_pixels(overfit_run):
    out, rec, _, _ = overfit_run
    propose = fr.rpn_proposer(out, device="cpu", post_nms_top_n=40)
    image = load_image(rec.path)
    boxes = propose(image)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 40
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= image.width and boxes[:, [1, 3]].max() <= image.height
    # the model resizes to 128 px either way: a 2x image gives the same proposals at twice the coordinates
    big = propose(image.resize((image.width * 2, image.height * 2), resample=3))
    from rcnn_cli.boxes import iou_matrix

    assert iou_matrix(big[:10] / 2, boxes[:5]).max(axis=0).min() > 0.95  # (near-ties may swap ranks)
    # the objects are among the top proposals (objectness order)
    assert iou_matrix(boxes[:20], rec.boxes).max(axis=0).min() > 0.7


def test_rpn_proposals_file_readable(overfit_run, shapes_root, tmp_path):
    proposals = pytest.importorskip("rcnn_cli.proposals")
    if not hasattr(proposals, "run_propose"):
        pytest.skip("rcnn_cli.proposals.run_propose not available yet")
    from rcnn_cli.data.inputs import resolve_inputs

    out, _, _, _ = overfit_run
    propose = fr.rpn_proposer(out, device="cpu", post_nms_top_n=30)
    inputs = resolve_inputs([str(shapes_root)], split="test")
    path = tmp_path / "rpn.h5"
    proposals.run_propose(inputs, path, proposals.ProposalConfig(min_size=0), proposer=propose,
                          attrs=fr.rpn_attrs(out, 30), progress=False)
    with proposals.load(path) as reader:
        assert reader.ids() == [i.image_id for i in inputs]
        assert reader.attrs["method"] == "rpn"
        first = inputs[0]
        assert np.allclose(reader.boxes(first.image_id), propose(load_image(first.path)))
        assert reader.image_size(first.image_id) == load_image(first.path).size
    features = pytest.importorskip("rcnn_cli.rcnn.features")
    if not hasattr(features, "run_extract_features"):
        return
    from rcnn_cli.data.inputs import load_dataset

    ds = load_dataset(shapes_root, "test")
    feats = tmp_path / "feats.h5"
    config = features.FeatureConfig(backbone="efficientnet_lite0", weights="none", warp_size=64, max_proposals=10,
                                    batch_size=16, dtype="float32", device="cpu")
    features.run_extract_features(ds, path, feats, config, progress=False)
    with features.load_features(feats) as fr_, proposals.load(path) as reader:
        assert sorted(fr_.ids()) == sorted(reader.ids())
        got = fr_.get(ds.records[0].image_id)
        rpn_boxes = reader.boxes(ds.records[0].image_id)[:10]
        # every RPN box is a region of the features store (besides the ground truth)
        from rcnn_cli.boxes import iou_matrix

        assert iou_matrix(rpn_boxes, got["boxes"]).max(axis=1).min() > 0.999
        assert got["features"].shape[0] == got["boxes"].shape[0] and got["features"].shape[1] == 1280


def test_cli_train_and_detect(shapes_root, tmp_path):
    from rcnn_cli.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["faster", "train", str(shapes_root), "--split", "trainval", "--out", str(run), "--min-size", "128",
              "--max-size", "128", "--auto-anchors", "--max-iters", "3", "--epochs", "1", "-b", "2",
              "--rpn-pre-nms-train", "600", "--rpn-post-nms-train", "200", "--weights", "none"])
    assert e.value.code == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert cfg["kind"] == "faster_rcnn" and cfg["auto_anchors"] and len(cfg["anchor_sizes"]) == 3
    assert cfg["rpn_post_nms_top_n_train"] == 200 and cfg["classes"] == ["circle", "square", "star", "triangle"]
    out = tmp_path / "dets.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["faster", "detect", str(shapes_root), "--split", "test", "--model", str(run), "--out", str(out),
              "--device", "cpu", "--top-k", "5", "--score-threshold", "0", "--no-progress"])
    assert e.value.code == 0
    rows = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [f"test_{i:05d}" for i in range(4)]
    from rcnn_cli.io.detections import read_detections

    dets = read_detections(out)
    for d in dets.values():
        assert d.boxes.shape[1] == 4 and len(d) <= 5 and set(d.labels) <= set(cfg["classes"])
    assert Path(str(out) + ".config.json").is_file()
    with pytest.raises(SystemExit) as e:
        main(["faster", "detect", str(shapes_root), "--split", "test", "--model", str(tmp_path / "missing")])
    assert e.value.code == 2


def test_rcnn_pipeline_on_rpn_proposals(overfit_run, shapes_root, tmp_path):
    """`rcnn pipeline --method rpn --rpn-model RUN`: the proposals are the RPN's, the R-CNN model
    records that run, and `rcnn detect` without a proposals file runs the same RPN on the fly."""
    from rcnn_cli.rcnn.pipeline import PipelineConfig, run_pipeline
    from rcnn_cli.proposals import load as load_proposals
    from rcnn_cli.rcnn.model import RCNNDetector

    out, _, _, _ = overfit_run
    settings = dict(dataset=str(shapes_root), method="rpn", rpn_model=str(out), limit=20, min_size=0, workers=1,
                    warp_size=32, padding=4, weights="none", device="cpu", runtime="torch")  # proposals equal torch's
    run = tmp_path / "run"
    metrics = run_pipeline(PipelineConfig(**settings), run, progress=False)
    assert {v["status"] for v in metrics["stages"].values()} == {"ran"}
    with load_proposals(run / "proposals_test.h5") as reader:
        assert reader.attrs["method"] == "rpn" and int(reader.attrs["post_nms_top_n"]) == 20
        image_id = reader.ids()[0]
        cached = reader.boxes(image_id)
    path = next((shapes_root / "JPEGImages").glob(f"{image_id}.*"))
    assert np.allclose(cached, fr.rpn_proposer(out, device="cpu", post_nms_top_n=20)(load_image(path)))
    record = json.loads((run / "model" / "config.json").read_text())
    model_cfg = record["model"]
    assert model_cfg["proposals"]["method"] == "rpn" and model_cfg["proposals"]["model"] == str(out.resolve())
    detector = RCNNDetector(run / "model", device="cpu")
    assert np.allclose(detector.propose(load_image(path), image_id), cached, atol=1e-4)
    moved = tmp_path / "moved_model"  # the Faster R-CNN run is gone: a one-line error, not a traceback
    shutil.copytree(run / "model", moved)
    model_cfg["proposals"]["model"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="which is not here"):
        RCNNDetector(moved, device="cpu").propose(load_image(path), image_id)
    again = run_pipeline(PipelineConfig(**settings), run, progress=False)
    assert {v["status"] for v in again["stages"].values()} == {"skipped"}
    # The detector's own fine-tuned backbone as R-CNN features (`--weights` from `rcnn export-backbone`):
    # the proposals stay, every stage from the features on runs again, on the exported weights.
    from rcnn_cli.rcnn.features import load_features
    from rcnn_cli.workflows.export import export_backbone

    info = export_backbone(out, tmp_path / "backbone.safetensors")
    tuned = run_pipeline(PipelineConfig(**dict(settings, weights=str(tmp_path / "backbone.safetensors"))), run,
                         progress=False)
    status = {k: v["status"] for k, v in tuned["stages"].items()}
    assert status["propose-train"] == status["propose-test"] == "skipped" and status["features-train"] == "ran"
    with load_features(run / "features_test.h5") as store:
        assert store.attrs["weights_id"] == info["weights_id"]
    assert json.loads((run / "model" / "config.json").read_text())["model"]["weights_id"] == info["weights_id"]
    with pytest.raises(UserError, match="not 'imagenet', 'none' or an existing"):
        run_pipeline(PipelineConfig(**dict(settings, weights=str(tmp_path / "gone.safetensors"))), run, progress=False)
    with pytest.raises(UserError, match="not a finished"):
        run_pipeline(PipelineConfig(**dict(settings, rpn_model=str(tmp_path / "none"))), tmp_path / "r2", progress=False)
