"""Overfeat: FC layers as convolutions, greedy merging, scales from the data, training windows, the detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rcnn_cli.registry import load_detector
from rcnn_cli.engine import TrainConfig
from rcnn_cli.errors import UserError
from rcnn_cli.models import overfeat as O
from rcnn_cli.models.localizer import Localizer
from rcnn_cli.models.overfeat.train import _matches


@pytest.mark.parametrize("attach,boxes", [("conv", "specific"), ("fc", "agnostic")])
def test_dense_heads_equal_the_fc_heads_at_every_window(attach, boxes):
    cfg = O.OverfeatConfig(classes=["a", "b", "c"], attach=attach, boxes=boxes, input_size=96, hidden=16)
    model = Localizer(cfg, weights="none").eval()
    torch.manual_seed(0)
    fmap = torch.randn(2, model.classifier.in_features, 5, 7)  # 3 x 3 windows, 3 cells each
    with torch.no_grad():
        logits, dense = O.dense_heads(model, fmap)
        assert logits.shape == (2, 4, 3, 5)  # C + background
        assert dense.shape == (2, 3 if boxes == "specific" else 1, 4, 3, 5)
        for i in range(3):
            for j in range(5):
                l, b = model.heads(fmap[..., i:i + 3, j:j + 3])
                torch.testing.assert_close(logits[..., i, j], l[:, 0], atol=1e-5, rtol=0)
                torch.testing.assert_close(dense[..., i, j], b[:, 0], atol=1e-5, rtol=0)


def test_a_224_window_on_a_256_image_gives_2x2_windows():
    cfg = O.OverfeatConfig(classes=["a"], input_size=224, hidden=8, scales=[1.0])
    det = O.OverfeatDetector(Localizer(cfg, weights="none"))
    with torch.no_grad():
        probs, boxes, windows = det.dense(torch.rand(3, 256, 256), scale=1.0, offset=0)
    assert probs.shape == (4, 1) and boxes.shape == (4, 1, 4)
    assert windows.tolist() == [[0, 0, 224, 224], [32, 0, 256, 224], [0, 32, 224, 256], [32, 32, 256, 256]]


def test_window_boxes_with_offset_and_scale_back_to_pixels():
    w = O.window_boxes(1, 2, window=64, offset=16)
    assert w.tolist() == [[-16, -16, 48, 48], [16, -16, 80, 48]]


def test_greedy_merge_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=torch.float32)
    # match(A, B) = centre distance 1 / size 10 + 1 - IoU 90/110 = 0.2818 -> merged; C is far from both
    np.testing.assert_allclose(O.match_scores(boxes[:1], boxes[1:2]).item(), 0.1 + 1 - 90 / 110, atol=1e-6)
    b, s, n = O.greedy_merge(boxes, torch.tensor([0.9, 0.8, 0.7]), threshold=0.5)
    np.testing.assert_allclose(b.numpy(), [[0.5, 0, 10.5, 10], [50, 50, 60, 60]], atol=1e-6)
    np.testing.assert_allclose(s.numpy(), [1.7, 0.7], atol=1e-6)
    assert n.tolist() == [2, 1]


def test_greedy_merge_averages_every_member():
    # A, B merge first (0.28); the merged box meets E at 0.365 (< 0.5): one box, the mean of the three
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11]], dtype=torch.float32)
    b, s, n = O.greedy_merge(boxes, torch.tensor([0.9, 0.8, 0.6]), threshold=0.5)
    np.testing.assert_allclose(b.numpy(), [[1 / 3, 1 / 3, 31 / 3, 31 / 3]], atol=1e-5)
    assert n.tolist() == [3] and abs(float(s[0]) - 2.3) < 1e-6
    b, _, n = O.greedy_merge(boxes, torch.tensor([0.9, 0.8, 0.6]), threshold=0.2)  # nothing is that close
    assert n.tolist() == [1, 1, 1] and len(b) == 3


def test_scales_from_the_objects_sizes():
    one_size = O.choose_scales(np.full(50, 100.0), np.full(50, 500.0), window=224, fill=(0.4, 0.9))
    mid = 224 * 0.65 / 100  # the object fills the middle of the training range at the middle scale
    np.testing.assert_allclose(one_size, [mid * 1.5, mid, mid / 1.5], atol=1e-3)
    sides = np.r_[np.full(20, 20.0), np.full(80, 400.0)]  # 10th percentile 20 px -> 7.3x, capped at 1600 / 500
    spread = O.choose_scales(sides, np.full(100, 500.0), window=224, fill=(0.4, 0.9))
    assert spread[0] == pytest.approx(1600 / 500) and spread[-1] == pytest.approx(224 * 0.65 / 400, abs=1e-3)
    assert len(spread) == 1 + int(np.ceil(np.log(3.2 / 0.364) / np.log(1.5)))  # 7: at most 1.5x apart
    assert all(a / b <= 1.5 + 1e-6 for a, b in zip(spread, spread[1:]))
    big = O.choose_scales(np.full(10, 400.0), np.full(10, 500.0), window=224, fill=(0.4, 0.9))
    assert big[1] < 1  # large objects: the image shrinks
    with pytest.raises(UserError):
        O.choose_scales(np.zeros(0), np.zeros(0), 224, (0.4, 0.9))


def test_training_windows_hold_their_object():
    cfg = O.OverfeatConfig(classes=["a", "b"], input_size=64, scales=[1.0], positives=2, negatives=3)
    boxes, labels = torch.tensor([[10.0, 20, 50, 40], [100, 100, 180, 190]]), torch.tensor([0, 1])
    win, lab, rel = O.sample_windows(boxes, labels, 200, 200, cfg, torch.Generator().manual_seed(0))
    pos = lab < 2
    assert int(pos.sum()) == 2 and sorted(lab[pos].tolist()) == [0, 1]
    for w, l, r in zip(win[pos], lab[pos], rel[pos]):
        side = w[2] - w[0]
        torch.testing.assert_close(w[[0, 1, 0, 1]] + r * side, boxes[l])  # the target maps back to the object
        longest = torch.maximum(boxes[l, 2] - boxes[l, 0], boxes[l, 3] - boxes[l, 1]) / side
        assert 0.4 - 1e-6 <= longest <= 0.9 + 1e-6
    for w in win[~pos]:
        assert not _matches(w, boxes, cfg.fill).any() and float(w[2] - w[0]) == pytest.approx(64)


def test_config_refuses_bad_values():
    with pytest.raises(UserError, match="merge"):
        O.OverfeatConfig(classes=["a"], merge="mean")
    with pytest.raises(UserError, match="offsets"):
        O.OverfeatConfig(classes=["a"], offsets=[40])


def test_train_detect_and_merge_choices(tmp_path, shapes_root, caplog):
    from rcnn_cli.cli import main

    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, max_iters=2, progress=False, device="cpu")
    summary = O.train_overfeat(shapes_root, "trainval", tmp_path / "run",
                               O.OverfeatConfig(weights="none", input_size=64, hidden=8), cfg)
    scales = summary["model_config"]["scales"]
    assert len(scales) >= 3 and scales == sorted(scales, reverse=True)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["kind"] == "overfeat" and record["model"]["trained_on"]["scales"] == "chosen from the training boxes"
    det = load_detector(tmp_path / "run", device="cpu")
    out = det(np.full((96, 128, 3), 120, np.uint8))
    assert det.merge == "greedy" and len(out.boxes) == len(out.scores) <= det.config.top_k
    if len(out.boxes):
        assert (out.boxes[:, :2] >= 0).all() and (out.boxes[:, 2] <= 128).all() and (out.boxes[:, 3] <= 96).all()
        assert (out.boxes[:, 2:] >= out.boxes[:, :2]).all() and set(out.labels) <= set(det.classes)
    assert load_detector(tmp_path / "run", device="cpu", merge="nms").merge == "nms"
    with pytest.raises(SystemExit) as e:
        main(["detect", str(shapes_root / "JPEGImages" / "test_00000.jpg"), "--model", str(tmp_path / "run"),
              "--merge", "mean", "--out", str(tmp_path / "d.jsonl")])
    assert e.value.code == 2 and not (tmp_path / "d.jsonl").exists()


@pytest.mark.parametrize("which", ["localizer", "overfeat"])
def test_images_without_objects_are_left_out_with_a_warning(shapes_root, caplog, which):
    import dataclasses
    import logging

    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.log import logger as rcnn_logger
    from rcnn_cli.models.localizer import LocalizationDataset

    ds = load_dataset(shapes_root, "trainval")
    records = [dataclasses.replace(ds.records[0], boxes=np.zeros((0, 4), np.float32), labels=[])] + ds.records[1:]
    blank = type(ds)(ds.root, ds.split, ds.classes, records)
    make = (lambda d: LocalizationDataset(d, k=2)) if which == "localizer" else \
        (lambda d: O.WindowDataset(d, O.OverfeatConfig(classes=ds.classes, input_size=64, scales=[1.0])))
    caplog.set_level(logging.WARNING, logger="rcnn")
    rcnn_logger.propagate = True
    try:
        data = make(blank)
    finally:
        rcnn_logger.propagate = False
    assert len(data) == len(ds.records) - 1
    assert "1 image(s) without objects left out" in caplog.text and ds.records[0].image_id in caplog.text
    with pytest.raises(UserError, match="no image of the split has an object"):
        make(type(ds)(ds.root, ds.split, ds.classes, records[:1]))
