"""YOLO v1: target encoding, the five loss terms, decoding, the grid ceiling, training on the engine."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rcnn_cli.detector import DetectConfig
from rcnn_cli.registry import load_detector
from rcnn_cli.engine import TrainConfig
from rcnn_cli.errors import UserError
from rcnn_cli.io.tensors import load_tensors
from rcnn_cli.models import yolo as Y


def _params_to_boxes(params):
    return Y.cell_boxes(torch.tensor(params, dtype=torch.float32))


def test_targets_pick_the_cell_and_the_best_predictor():
    # S = 2, B = 2: one object centred at (0.25, 0.25), 0.2 wide, 0.4 high -> cell (row 0, col 0)
    gt = torch.tensor([[0.15, 0.05, 0.35, 0.45]])
    params = torch.zeros(2, 2, 2, 4)
    params[..., :2] = 0.5
    params[..., 2:] = 0.1  # tiny boxes everywhere
    params[0, 0, 1] = torch.tensor([0.5, 0.5, math.sqrt(0.2), math.sqrt(0.2)])  # predictor 1: 0.2 x 0.2 on the centre
    t = Y.build_targets(Y.cell_boxes(params), gt, torch.tensor([1]), num_classes=2)
    assert t["obj"].nonzero().tolist() == [[0, 0, 1]]  # that cell, the predictor with the higher IoU
    np.testing.assert_allclose(t["params"][0, 0, 1].numpy(), [0.5, 0.5, math.sqrt(0.2), math.sqrt(0.4)], atol=1e-6)
    assert t["iou"][0, 0, 1].item() == pytest.approx(0.5, abs=1e-5)  # 0.2x0.2 inside 0.2x0.4
    assert t["cls"][0, 0].tolist() == [0.0, 1.0]
    assert t["cell"].nonzero().tolist() == [[0, 0]]
    assert t["cls"].sum().item() == 1.0 and t["params"].abs().sum().item() == pytest.approx(
        1.0 + math.sqrt(0.2) + math.sqrt(0.4), abs=1e-5)  # nothing in the cells without objects


def test_two_objects_in_one_cell():
    boxes = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]])
    (rows, cols), kept = Y.assign_cells(boxes, 2, 1)
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [0, 0, 1]
    assert kept.tolist() == [True, False, True]  # one per cell: the larger
    assert Y.assign_cells(boxes, 2, 2)[1].all()
    pred = Y.cell_boxes(torch.full((2, 2, 2, 4), 0.5))
    t = Y.build_targets(pred, boxes, torch.tensor([0, 1, 0]), num_classes=2)
    assert t["obj"][0, 0].tolist() == [True, True]  # B = 2: both objects, one predictor each
    assert t["cls"][0, 0].tolist() == [0.5, 0.5]  # the mean of the cell's classes
    # ceiling on a hand-made dataset (one image, 100 x 100): 2 of 3 boxes at B = 1, all at B = 2
    rec = SimpleNamespace(width=100, height=100, boxes=(boxes * 100).numpy(), labels=["a", "b", "a"])
    rows_ = Y.grid_ceiling(SimpleNamespace(records=[rec], classes=["a", "b"]), grids=[2], boxes_per_cell=[1, 2])
    assert rows_[0]["total"] == pytest.approx(2 / 3) and rows_[0]["per_class"] == {"a": 1.0, "b": 0.0}
    assert rows_[1]["total"] == 1.0 and rows_[0]["boxes"] == 3


def test_loss_terms_on_a_hand_case():
    # S = 1, B = 1, C = 2, batch of 1: output (x, y, sw, sh, conf, p0, p1)
    out = torch.tensor([[[[0.4, 0.7, 0.5, 0.6, 0.9, 0.2, 0.8]]]])
    t = {"obj": torch.tensor([[[True]]]), "params": torch.tensor([[[[0.5, 0.5, 0.4, 0.4]]]]),
         "iou": torch.tensor([[[0.6]]]), "cls": torch.tensor([[[0.0, 1.0]]]), "cell": torch.tensor([[True]])}
    loss = Y.yolo_loss(out, [t], boxes_per_cell=1, lambda_coord=5.0, lambda_noobj=0.5)
    assert loss["loss_xy"].item() == pytest.approx(5 * (0.1 ** 2 + 0.2 ** 2))
    assert loss["loss_wh"].item() == pytest.approx(5 * (0.1 ** 2 + 0.2 ** 2))
    assert loss["loss_obj"].item() == pytest.approx(0.3 ** 2)
    assert loss["loss_noobj"].item() == 0.0
    assert loss["loss_class"].item() == pytest.approx(0.2 ** 2 + 0.2 ** 2)
    empty = {k: torch.zeros_like(v) for k, v in t.items()}  # no object: only the no-object confidence term
    loss = Y.yolo_loss(out, [empty], boxes_per_cell=1)
    assert loss["loss_noobj"].item() == pytest.approx(0.5 * 0.81)
    assert sum(v.item() for k, v in loss.items() if k != "loss_noobj") == 0.0


def test_decoding_a_hand_made_output():
    out = torch.zeros(2, 2, 7)  # S = 2, B = 1, C = 2
    out[1, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8, 0.25, 0.75])  # row 1, col 0
    boxes, scores = Y.decode_output(out, 1, width=100, height=200)
    i = 1 * 2 + 0
    np.testing.assert_allclose(boxes[i].numpy(), [12.5, 125.0, 37.5, 175.0], atol=1e-5)
    np.testing.assert_allclose(scores[i].numpy(), [0.2, 0.6], atol=1e-6)
    assert scores.shape == (4, 2) and float(scores.sum()) == pytest.approx(0.8)


def test_config_checks_input_size():
    assert Y.YOLOConfig(classes=["a"]).input_size == 448
    assert Y.YOLOConfig(classes=["a"], grid=7, input_size=224).input_size == 224
    with pytest.raises(UserError, match="32 x grid"):
        Y.YOLOConfig(classes=["a"], grid=7, input_size=300)
    with pytest.raises(UserError, match="--head"):
        Y.YOLOConfig(classes=["a"], head="mlp")


def _tiny(out: Path, root: Path, **train) -> dict:
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "progress": False,
                         "device": "cpu", **train})
    return Y.train_yolo(root, "trainval", out,
                        Y.YOLOConfig(weights="none", grid=2, input_size=64, hidden=16, head_channels=8), cfg)


def test_resume_is_exact_and_the_run_detects(tmp_path, shapes_root):
    _tiny(tmp_path / "a", shapes_root, max_iters=4, checkpoint_every=2)
    _tiny(tmp_path / "b", shapes_root, max_iters=2, checkpoint_every=2)
    Y.train_yolo(shapes_root, "trainval", tmp_path / "b", Y.YOLOConfig(weights="none"),
                 TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, progress=False, device="cpu",
                             max_iters=4, checkpoint_every=2), resume=True)
    a, b = load_tensors(tmp_path / "a" / "model.safetensors"), load_tensors(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    detector = load_detector(tmp_path / "a", device="cpu", config=DetectConfig(score_threshold=0.0, top_k=3))
    assert isinstance(detector, Y.YOLODetector) and detector.settings()["grid"] == 2
    det = detector(np.zeros((50, 80, 3), np.uint8))
    assert len(det.boxes) == 3 and (det.boxes[:, [0, 2]] <= 80).all() and (det.boxes[:, [1, 3]] <= 50).all()
    pytest.importorskip("onnxruntime")
    image = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    ort = load_detector(tmp_path / "a", device="cpu", config=DetectConfig(score_threshold=0.0, top_k=3),
                        runtime="onnxruntime")
    assert ort.settings()["runtime"] == "onnxruntime"
    np.testing.assert_allclose(ort(image).boxes, detector(image).boxes, atol=0.5)


def test_overfits_a_few_images(tmp_path):
    """On four images of one large shape each, the trained YOLO puts a box on the object (IoU >= 0.5)."""
    from rcnn_cli.boxes import iou_matrix
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.data.shapes import make_shapes

    root = make_shapes(tmp_path / "d", train=4, test=1, size=128, seed=3)
    ds = load_dataset(root, "trainval")
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=60, batch_size=4, lr=0.005, warmup_iters=10, progress=False, device="cpu", lr_steps=())
    Y.train_yolo(root, "trainval", tmp_path / "run", Y.YOLOConfig(grid=4, input_size=128, jitter=0.0, exposure=1.0),
                 cfg)
    detector = load_detector(tmp_path / "run", device="cpu", config=DetectConfig(score_threshold=0.0, top_k=1))
    hits = 0
    for rec in ds.records:
        det = detector(rec.path)
        hits += int(iou_matrix(det.boxes, rec.boxes).max() >= 0.5)
    assert hits >= 3


def test_export_the_whole_network(tmp_path, shapes_root):
    """`rcnn export` of a YOLO run: the whole network in ONNX, the same output as torch."""
    ort = pytest.importorskip("onnxruntime")
    from rcnn_cli.workflows.export import export_run

    _tiny(tmp_path / "run", shapes_root, max_iters=1)
    info = export_run(tmp_path / "run", "onnx", tmp_path / "yolo.onnx")
    assert info["outputs"][0]["shape"] == ["batch", 2, 2, 14] and "decode_output" in info["caller"]
    model, _ = Y.load_model(tmp_path / "run")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.head(model.trunk(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / "yolo.onnx")).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
