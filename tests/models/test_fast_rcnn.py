"""Fast R-CNN: RoI pooling, minibatch sampling, the multi-task loss, a tiny overfit, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from torchvision.ops import box_iou

from rcnn_cli.boxes import decode
from rcnn_cli.models.fast_rcnn import BOX_WEIGHTS, FastRCNN, FastRCNNConfig, build_fast_rcnn, sample_rois


def tiny_model(roi_size: int = 2, stride: int = 1, roi_align: bool = False, **cfg) -> FastRCNN:
    config = FastRCNNConfig(classes=["a", "b", "c"], roi_size=roi_size, roi_align=roi_align, representation_size=8,
                            min_size=32, max_size=32, **cfg)
    trunk = nn.Conv2d(3, 1, 1)
    return FastRCNN(trunk, 1, stride, config, mean=(0, 0, 0), std=(1, 1, 1))


def test_roi_pool_known_feature_map():
    features = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    model = tiny_model(roi_size=2, stride=1)
    out = model._pool(features, [torch.tensor([[0.0, 0.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])])
    assert out.shape == (2, 1, 2, 2)
    assert out[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]  # max of each 2x2 quadrant
    assert out[1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # a 2x2 RoI: one cell per bin
    # stride 2: image-pixel boxes are halved onto the feature map (spatial_scale = 1/16 for real trunks)
    out2 = tiny_model(roi_size=2, stride=2)._pool(features, [torch.tensor([[0.0, 0.0, 6.0, 6.0]])])
    assert out2[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    # RoIAlign averages bilinear samples: on a linear ramp f = 4y + x the centre of a bin is its value
    align = tiny_model(roi_size=2, stride=1, roi_align=True)._pool(features, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])])
    # bins are [0,2)x[0,2) etc. in pixel coordinates; aligned=True shifts by half a pixel: centres at 0.5, 2.5
    assert align[0, 0].flatten().tolist() == pytest.approx([0.5 * 4 + 0.5, 0.5 * 4 + 2.5, 2.5 * 4 + 0.5, 2.5 * 4 + 2.5])


def _proposals_with_ious() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    boxes = []
    for s in np.linspace(0, 30, 40):  # IoU from 1 down to ~0.54: foreground
        boxes.append([100 + s, 100, 200 + s, 200])
    for s in np.linspace(40, 80, 100):  # IoU ~0.43 .. 0.11: background
        boxes.append([100 + s, 100, 200 + s, 200])
    for s in np.linspace(0, 300, 60):  # far away: IoU 0
        boxes.append([400 + s, 400, 450 + s, 450])
    return torch.tensor(boxes, dtype=torch.float32), gt


def test_sampler_fractions_and_targets():
    torch.manual_seed(0)
    props, gt = _proposals_with_ious()
    iou = box_iou(gt, props)[0]
    assert int((iou >= 0.5).sum()) == 40 and int(((iou >= 0.1) & (iou < 0.5)).sum()) == 100
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    rois, labels, targets = sample_rois(props, gt, torch.tensor([2]), sampler, 0.5, 0.1)
    assert len(rois) == 64 and int((labels == 2).sum()) == 16 and int((labels == 0).sum()) == 48
    roi_iou = box_iou(gt, rois)[0]
    assert bool((roi_iou[labels == 2] >= 0.5).all())
    assert bool(((roi_iou[labels == 0] >= 0.1) & (roi_iou[labels == 0] < 0.5)).all())
    # regression targets decode back onto the ground truth; backgrounds have zero targets
    back = decode(targets[labels > 0], rois[labels > 0], BOX_WEIGHTS)
    assert torch.allclose(back, gt.expand_as(back), atol=1e-3)
    assert bool((targets[labels == 0] == 0).all())
    # the targets are normalised by stds (0.1, 0.1, 0.2, 0.2): a shift of 0.1 widths -> dx = 1
    shifted = torch.tensor([[110.0, 100.0, 210.0, 200.0]])
    _, lab, t = sample_rois(shifted, gt, torch.tensor([1]), BalancedPositiveNegativeSampler(4, 1.0))
    assert lab.tolist() == [1] and t[0].tolist() == pytest.approx([-1.0, 0.0, 0.0, 0.0], abs=1e-5)


def test_sampler_background_fallback_and_empty_image():
    torch.manual_seed(0)
    props, gt = _proposals_with_ious()
    few_bg = torch.cat([props[:40], props[140:]])  # no proposal in [0.1, 0.5): fall back to [0, 0.5)
    rois, labels, _ = sample_rois(few_bg, gt, torch.tensor([1]), BalancedPositiveNegativeSampler(64, 0.25))
    assert int((labels == 1).sum()) == 16 and int((labels == 0).sum()) == 48
    # an image without objects: only backgrounds, no NaN anywhere
    rois, labels, targets = sample_rois(props, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long),
                                        BalancedPositiveNegativeSampler(64, 0.25))
    assert len(rois) == 64 and bool((labels == 0).all()) and bool(torch.isfinite(targets).all())


def test_loss_on_hand_made_case():
    model = tiny_model(roi_size=2, stride=1)
    for layer in (model.cls_score, model.bbox_pred):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    model.train()
    image = torch.rand(3, 32, 32)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # proposal shifted one pixel right: IoU 90/110 (foreground), dx = 10 * (5 - 6) / 10 = -1
    target = {"boxes": gt, "labels": torch.tensor([3]), "proposals": torch.tensor([[1.0, 0.0, 11.0, 10.0]])}
    losses = model([image], [target])
    # zero logits over 4 classes: CE = log 4; two RoIs (the proposal + the gt box added to the proposals),
    # smooth L1 (beta 1/9) of the one non-zero target: 1 - 0.5/9, averaged over the 2 sampled RoIs
    assert losses["loss_classifier"].item() == pytest.approx(math.log(4), rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx((1 - 0.5 / 9) / 2, rel=1e-4)
    # an image without objects and without proposals still gives finite losses (one background RoI)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long), "proposals": torch.zeros((0, 4))}
    losses = model([image], [empty])
    assert losses["loss_classifier"].item() == pytest.approx(math.log(4), rel=1e-5)
    assert losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()


def test_eval_boxes_in_original_pixels():
    """Detections come back in the input image's pixels, whatever the internal resize."""
    torch.manual_seed(0)
    model = tiny_model(roi_size=2, stride=1, score_thresh=0.5)
    model.config.min_size, model.config.max_size = 64, 64
    model.transform.min_size, model.transform.max_size = (64,), 64  # 32x48 images are upscaled x1.33
    with torch.no_grad():
        for layer in (model.cls_score, model.bbox_pred):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        model.cls_score.bias[2] = 5.0  # every RoI: class "b", no box change
    model.eval()
    out = model([torch.rand(3, 32, 48)], proposals=[torch.tensor([[4.0, 6.0, 20.0, 30.0]])])[0]
    assert out["labels"].tolist() == [2]
    assert out["boxes"][0].tolist() == pytest.approx([4.0, 6.0, 20.0, 30.0], abs=1e-3)


def _jittered(gt: np.ndarray, rng: np.random.Generator, size: int, n_random: int = 40) -> np.ndarray:
    out = []
    for b in gt:
        w, h = b[2] - b[0], b[3] - b[1]
        out += [b + rng.normal(0, 0.1, 4) * np.array([w, h, w, h]) for _ in range(8)]
    for _ in range(n_random):
        x, y = rng.uniform(0, size - 20, 2)
        w, h = rng.uniform(10, size / 2, 2)
        out.append([x, y, x + w, y + h])
    return np.clip(np.array(out, np.float32), 0, size)


def test_tiny_overfit_reaches_perfect_detections(tmp_path):
    """One shapes image, ImageNet EfficientNet-Lite0 trunk (frozen for speed), 200 iterations on the CPU."""
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.data.shapes import make_shapes
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.evaluation import evaluate

    torch.manual_seed(0)
    ds = load_dataset(make_shapes(tmp_path / "shapes", train=3, test=1, size=128, seed=1), "trainval")
    ds.records = [max(ds.records, key=lambda r: len(r.boxes))]  # 3 objects, 2 classes
    assert len(ds.records[0].boxes) == 3
    props = torch.from_numpy(_jittered(ds.records[0].boxes, np.random.default_rng(0), 128))
    cfg = FastRCNNConfig(classes=ds.classes, min_size=128, max_size=128, representation_size=256,
                         frozen_layers=100, roi_align=True)
    model = build_fast_rcnn(cfg, "imagenet")
    image, target = DetectionDataset(ds, flip=False)[0]
    target["proposals"] = props
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    model.train()
    for _ in range(200):
        losses = model([image], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    out = model([image], proposals=[props])[0]
    det = ImageDetections(ds.records[0].image_id, out["boxes"].numpy(), out["scores"].numpy(),
                          [ds.classes[i - 1] for i in out["labels"].tolist()])
    assert evaluate(ds, {det.image_id: det}, metric="voc12")["mAP"] == pytest.approx(1.0)
    top = out["boxes"][:3]
    iou = box_iou(target["boxes"], top)
    best = iou.max(dim=1)
    assert bool((best.values > 0.7).all())
    assert out["labels"][best.indices].tolist() == target["labels"].tolist()
    assert bool((out["scores"][:3] > 0.9).all())


def test_config_roundtrip_and_backbone_head():
    cfg = FastRCNNConfig(classes=["x"], backbone="efficientnet_lite0", head="backbone", min_size=64, max_size=64)
    model = build_fast_rcnn(cfg, "none")
    assert model.config.roi_size == 14 and model.head.out_dim == 1280  # the backbone's head wants 14x14 RoIs
    again = FastRCNNConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert again == model.config
    model.eval()
    out = model([torch.rand(3, 50, 70)], proposals=[torch.tensor([[0.0, 0.0, 30.0, 30.0]])])[0]
    assert out["boxes"].shape[1] == 4 and bool((out["boxes"][:, 2] <= 70).all())


def test_export_backbone_reproduces_the_detectors_features(tmp_path):
    """A Fast R-CNN with the backbone's own head: the exported --weights give its trunk + head features."""
    from rcnn_cli.backbones import build_feature_extractor
    from rcnn_cli.cli import main
    from rcnn_cli.io.tensors import save_state as save_weights
    from rcnn_cli.workflows.export import export_backbone
    from rcnn_cli.io import write_json

    cfg = FastRCNNConfig(classes=["x"], backbone="efficientnet_lite0", head="backbone", min_size=64, max_size=64)
    model = build_fast_rcnn(cfg, "none")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for training: every trunk and head tensor moves
        for t in list(model.trunk.state_dict().values()) + list(model.head.state_dict().values()):
            if t.is_floating_point():
                t.add_(0.01 * torch.randn(t.shape, generator=gen))
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", {"command": "rcnn fast train", "config": {"model": cfg.to_dict()}})
    save_weights(model, run / "model.safetensors")
    info = export_backbone(run, tmp_path / "w.safetensors")
    assert info["trained_layers"] == "trunk and head" and info["weights_id"].startswith("file:")
    fx = build_feature_extractor("efficientnet_lite0", tmp_path / "w.safetensors", layer="pool")
    x = torch.rand(2, 3, 96, 96, generator=gen)
    with torch.no_grad():
        assert torch.allclose(fx(x), model.head(model.trunk(x)), atol=1e-5)
    assert json.loads((tmp_path / "w.safetensors.config.json").read_text())["config"]["run"] == str(run)
    bad = ([str(run), "--out", str(tmp_path / "w.pt")],
           [str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors")])
    for args in bad:
        with pytest.raises(SystemExit) as exc:  # a .pt name / no run there: one-line errors
            main(["export-backbone", *args])
        assert exc.value.code == 2
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "x.safetensors").exists()


def test_cli_train_and_detect(shapes_root, tmp_path):
    """End to end through the CLI on the shapes data with a proposals file."""
    proposals_mod = pytest.importorskip("rcnn_cli.proposals")
    from rcnn_cli.cli import main
    from rcnn_cli.data.inputs import load_dataset, resolve_inputs

    ds_all = {s: load_dataset(shapes_root, s) for s in ("trainval", "test")}
    rng = np.random.default_rng(0)
    boxes_by_id = {r.image_id: _jittered(r.boxes, rng, 128, 30) for ds in ds_all.values() for r in ds.records}
    props_file = tmp_path / "props.h5"
    items = resolve_inputs([str(shapes_root)], "trainval") + resolve_inputs([str(shapes_root)], "test")
    by_path = {str(i.path): i.image_id for i in items}

    def proposer(img):
        # the images differ; find this one by content (size is the same for all): use a lookup on pixel sums
        key = int(np.asarray(img, np.int64).sum())
        return boxes_by_id[sums[key]]

    from rcnn_cli.data.images import load_image
    sums = {int(np.asarray(load_image(i.path), np.int64).sum()): i.image_id for i in items}
    proposals_mod.run_propose(items, props_file, proposer=proposer, progress=False, workers=1)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["fast", "train", str(shapes_root), "--split", "trainval", "--proposals", str(props_file), "--out", str(run),
              "--weights", "none", "--min-size", "128", "--max-size", "128", "--epochs", "2", "--no-progress",
              "--lr", "0.005", "--frozen-layers", "100", "--val-split", "test", "--warmup-iters", "2", "--log-every", "1"])
    assert e.value.code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["classes"] == ["circle", "square", "star", "triangle"]
    assert config["train"]["epochs"] == 2 and config["complete"] is True
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert len(epochs) == 2 and "val_mAP" in epochs[-1] and 0.0 <= epochs[-1]["val_mAP"] <= 1.0
    assert all(math.isfinite(r["loss"]) for r in lines)
    out = tmp_path / "dets.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["fast", "detect", str(shapes_root), "--split", "test", "--model", str(run), "--proposals", str(props_file),
              "--out", str(out), "--no-progress", "--score-threshold", "0.0", "--top-k", "5"])
    assert e.value.code == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["image_id"] for r in recs) == sorted(r.image_id for r in ds_all["test"].records)
    assert all(len(r["detections"]) <= 5 for r in recs)
    assert all({"proposals", "network"} <= set(r["timings"]) for r in recs)
    assert all(d["label"] in config["model"]["classes"] for r in recs for d in r["detections"])
