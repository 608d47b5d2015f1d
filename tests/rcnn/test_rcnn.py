"""R-CNN model directory (save/merge/load checks), post-processing (NMS, top-K) and detect output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.rcnn.classifiers import BBoxRegressor, SVMModel
from rcnn_cli.errors import UserError
from rcnn_cli.rcnn.model import RCNNDetector, load_model, postprocess, save_bbox, save_svm

FEAT_CFG = {"backbone": "efficientnet_lite0", "weights_id": "efficientnet_lite0:imagenet-offline", "layer": "pool",
            "warp_size": 64, "padding": 16, "feature_dim": 3, "normalization": "", "weights": "imagenet"}
CLASSES = ["a", "b"]


def _svm() -> SVMModel:
    # class a fires when feature 0 is large, class b when feature 1 is large
    return SVMModel(np.array([[10.0, 0, 0], [0, 10.0, 0]], np.float32), np.array([-5.0, -5.0], np.float32), 1.0, CLASSES)


def _bbox(shift: float = 0.0) -> BBoxRegressor:
    # zero weights: every box moves by the mean target (dx = shift)
    mean = np.zeros((2, 4), np.float32)
    mean[:, 0] = shift
    return BBoxRegressor(np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.float32), mean,
                         np.ones((2, 4), np.float32), 1.0, CLASSES)


def _make_model(path: Path, shift: float = 0.0) -> Path:
    save_svm(path, _svm(), dict(FEAT_CFG, classes=CLASSES), {"C": 0.001}, {"method": "selective-search", "mode": "fast",
                                                                            "max_size": 200, "min_size": 10, "limit": 50})
    save_bbox(path, _bbox(shift), dict(FEAT_CFG, classes=CLASSES), {"lambda": 1000.0})
    return path


def test_model_roundtrip_and_merge(tmp_path):
    m = load_model(_make_model(tmp_path / "m", shift=0.1))
    assert m.classes == CLASSES and m.config["feature_scale"] == 1.0
    assert m.config["proposals"]["max_size"] == 200 and m.config["weights"] == "imagenet"
    np.testing.assert_array_equal(m.svm.weights, _svm().weights)
    assert m.bbox is not None and m.bbox.target_mean[0, 0] == pytest.approx(0.1)
    assert set(m.config["arrays"]) == {"svm.safetensors", "bbox.safetensors"}
    # features of other settings cannot be merged into the same model directory
    with pytest.raises(UserError, match="warp_size"):
        save_bbox(tmp_path / "m", _bbox(), dict(FEAT_CFG, warp_size=96, classes=CLASSES), {})


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("classes"), "no 'classes'"),
    (lambda c: c.update(classes=["a", "a"]), "distinct"),
    (lambda c: c.update(classes=["a", "b", "c"]), "shape"),
    (lambda c: c.update(feature_dim=4), "shape"),
    (lambda c: c.update(feature_scale=-1), "feature_scale"),
    (lambda c: c.update(warp_size="big"), "wrong type"),
    (lambda c: c.update(version=99), "version"),
    (lambda c: c.update(kind="fast"), "not an R-CNN model"),
    (lambda c: c.update(layer="fc9"), "no layer"),
    (lambda c: c.update(backbone="nope"), "unknown backbone"),
    (lambda c: c.update(weights="backbone.safetensors"), "missing"),
])
def test_tampered_config_is_a_user_error(tmp_path, edit, message):
    root = _make_model(tmp_path / "m")
    record = json.loads((root / "config.json").read_text())
    edit(record if message == "not an R-CNN model" else record["model"])  # the run's kind, else the model
    (root / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=message):
        load_model(root)


def test_missing_or_bad_arrays_are_user_errors(tmp_path):
    root = _make_model(tmp_path / "m")
    (root / "bbox.safetensors").unlink()
    with pytest.raises(UserError, match="missing model array file"):
        load_model(root)
    root = _make_model(tmp_path / "m2")
    (root / "svm.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="safetensors"):
        load_model(root)
    (root / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON"):
        load_model(root)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nowhere")


def test_cli_tampered_model_prints_one_line(tmp_path, capsys):
    from rcnn_cli.cli import main

    root = _make_model(tmp_path / "m")
    (root / "svm.safetensors").unlink()
    img = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32)).save(img)
    with pytest.raises(SystemExit) as e:
        main(["detect", str(img), "--model", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "svm.safetensors" in err and "Traceback" not in err


def test_postprocess_nms_threshold_topk(tmp_path):
    m = load_model(_make_model(tmp_path / "m"))
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [70, 70, 80, 80]], np.float32)
    feats = np.array([[1.0, 0, 0],    # a, margin 5
                      [0.9, 0, 0],    # a, margin 4, IoU 0.82 with the first: suppressed
                      [0, 0.8, 0],    # b, same box as the first, other class: kept
                      [0.6, 0, 0],    # a, margin 1, far away: kept
                      [0, 0, 0]], np.float32)  # margin -5 for both: sigmoid 0.0067 < 0.05, dropped
    b, s, c = postprocess(m, feats, boxes, 100, 100, score_threshold=0.05, nms=0.3, top_k=100, use_bbox=False)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-np.array([5.0, 3.0, 1.0]))), rtol=1e-5)
    np.testing.assert_array_equal(c, [0, 1, 0])
    np.testing.assert_array_equal(b, boxes[[0, 2, 3]])
    # a looser NMS keeps the overlapping box; top-K cuts by score
    _, s2, _ = postprocess(m, feats, boxes, 100, 100, nms=0.9, top_k=100, use_bbox=False)
    assert len(s2) == 4
    _, s3, _ = postprocess(m, feats, boxes, 100, 100, nms=0.9, top_k=2, use_bbox=False)
    assert len(s3) == 2 and s3[0] >= s3[1]
    # score threshold 0 keeps every class of every region, then NMS per class: a keeps boxes 0, 3, 4;
    # b keeps box 2 (suppressing 0 and 1 for b), 3 and 4
    _, s4, c4 = postprocess(m, feats, boxes, 100, 100, score_threshold=0.0, nms=0.3, use_bbox=False)
    assert len(s4) == 6 and sorted(c4.tolist()) == [0, 0, 0, 1, 1, 1]


def test_bbox_regression_is_applied_and_clipped(tmp_path):
    m = load_model(_make_model(tmp_path / "m", shift=0.5))  # dx = 0.5: move right by half a width
    boxes = np.array([[10, 10, 30, 30], [85, 10, 95, 20]], np.float32)
    feats = np.array([[1.0, 0, 0], [1.0, 0, 0]], np.float32)
    b, _, _ = postprocess(m, feats, boxes, 100, 100, use_bbox=True)
    b = b[np.argsort(b[:, 0])]
    np.testing.assert_allclose(b[0], [20, 10, 40, 30], atol=1e-4)
    np.testing.assert_allclose(b[1], [90, 10, 100, 20], atol=1e-4)  # clipped at the right border


class _Proposals:
    def __init__(self, boxes):
        self._boxes = boxes

    def __contains__(self, image_id):
        return True

    def boxes(self, image_id):
        return self._boxes

    def boxes_for(self, image_id, size):
        return self._boxes


def _extractor(image, boxes):
    # feature 0: x1 / 50 (class a fires for x1 > 25), feature 1: y1 / 50
    boxes = np.asarray(boxes, np.float32)
    return np.stack([boxes[:, 0] / 50, boxes[:, 1] / 50, np.ones(len(boxes))], 1).astype(np.float32)


def test_detect_output_schema(tmp_path):
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.io.detections import read_detections
    from rcnn_cli.inference import DetectOutput, run_inference

    root = _make_model(tmp_path / "m")
    props = np.array([[40, 0, 60, 20], [0, 40, 20, 60], [0, 0, 10, 10]], np.float32)
    det = RCNNDetector(root, proposals=_Proposals(props), extractor=_extractor)
    inputs = []
    for k in range(2):
        p = tmp_path / f"img{k}.png"
        Image.new("RGB", (64, 64), (k * 50, 0, 0)).save(p)
        inputs.append(ImageInput(f"img{k}", p))
    inputs.append(ImageInput("missing", tmp_path / "missing.png"))
    out = tmp_path / "dets.jsonl"
    draw = tmp_path / "draw"
    res = run_inference(det, inputs, DetectOutput(out, "jsonl", draw=draw), classes=det.classes, progress=False)
    assert res["images"] == 2 and res["skipped"] == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["image_id"] for x in lines] == ["img0", "img1"]
    rec = lines[0]
    assert set(rec) >= {"image_id", "detections", "timings"}
    assert set(rec["timings"]) >= {"proposals", "network", "post"}
    dets = sorted(rec["detections"], key=lambda d: d["label"])
    assert [d["label"] for d in dets] == ["a", "b"]
    assert dets[0]["box"] == [40.0, 0.0, 60.0, 20.0] and dets[1]["box"] == [0.0, 40.0, 20.0, 60.0]
    # sigmoid(10 * 40/50 - 5) for both
    assert dets[0]["score"] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    assert set(x.name for x in draw.iterdir()) >= {"img0.jpg", "img1.jpg"} or len(list(draw.iterdir())) == 2
    back = read_detections(out)
    assert len(back["img1"]) == 2
