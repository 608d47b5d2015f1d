"""Classification + localization by regression: targets, head shapes, head-only training, guesses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn_cli.detector import DetectConfig
from rcnn_cli.registry import load_detector
from rcnn_cli.engine import TrainConfig
from rcnn_cli.io.tensors import load_tensors
from rcnn_cli.models import localizer as L


def test_targets_take_the_k_largest_and_mark_empty_slots():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 50, 20], [10, 10, 30, 30]], dtype=torch.float32)
    b, lab = L.localization_targets(boxes, torch.tensor([0, 1, 2]), width=100, height=50, k=2)
    assert lab.tolist() == [1, 2]  # areas 1000, 400 (100 left out)
    np.testing.assert_allclose(b.numpy(), [[0, 0, 0.5, 0.4], [0.1, 0.2, 0.3, 0.6]], atol=1e-6)
    b, lab = L.localization_targets(boxes[:1], torch.tensor([1]), 100, 50, k=3)
    assert lab.tolist() == [1, -1, -1] and b[1:].abs().sum() == 0


@pytest.mark.parametrize("boxes,attach,k,per_slot", [("agnostic", "fc", 1, 1), ("specific", "conv", 2, 3),
                                                     ("agnostic", "conv", 3, 1)])
def test_head_shapes(boxes, attach, k, per_slot):
    cfg = L.LocalizerConfig(classes=["a", "b", "c"], boxes=boxes, attach=attach, k=k, input_size=64, hidden=8)
    model = L.Localizer(cfg, weights="none").eval()
    logits, out = model([torch.rand(3, 40, 60), torch.rand(3, 64, 64)])
    assert logits.shape == (2, k, 3) and out.shape == (2, k, per_slot, 4)


def test_guesses_by_hand():
    cfg = L.LocalizerConfig(classes=["a", "b", "c"], boxes="specific", input_size=64, hidden=8, guesses=2)
    det = L.LocalizerDetector(L.Localizer(cfg, weights="none"))
    logits = torch.log(torch.tensor([[0.2, 0.7, 0.1]]))
    boxes = torch.tensor([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0, 0, 1, 1]]])
    b, s, labels = det.guesses(logits, boxes, width=200, height=100)
    assert labels == [1, 0]  # the two most probable classes, each with its own box
    np.testing.assert_allclose(s, [0.7, 0.2], atol=1e-6)
    np.testing.assert_allclose(b, [[100, 50, 200, 100], [0, 0, 100, 50]], atol=1e-4)


def test_head_only_leaves_the_backbone_alone(tmp_path, shapes_root):
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, warmup_iters=1, max_iters=3, progress=False, device="cpu")
    L.train_localizer(shapes_root, "trainval", tmp_path / "run",
                      L.LocalizerConfig(weights="none", head_only=True, input_size=64, hidden=8, k=2), cfg)
    state = load_tensors(tmp_path / "run" / "model.safetensors")
    fresh = L.Localizer(L.LocalizerConfig(classes=["circle", "square", "star", "triangle"], input_size=64, hidden=8,
                                          k=2), weights="none").state_dict()
    trunk = [k for k in state if k.startswith("trunk.")]
    assert trunk and all(torch.equal(state[k], fresh[k]) for k in trunk)
    assert not torch.equal(state["classifier.weight"], fresh["classifier.weight"])
    assert (tmp_path / "run" / "features.h5").is_file()
    det = load_detector(tmp_path / "run", device="cpu")
    out = det(np.zeros((30, 40, 3), np.uint8))
    assert len(out.boxes) == 2 * 4 and (np.diff(out.scores) <= 0).all()  # 4 classes x 2 slots, ranked
    assert det.config == DetectConfig(score_threshold=0.0)
