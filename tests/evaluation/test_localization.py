"""The ILSVRC localization metric on a hand-made case, and the single-object shapes data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.evaluation import evaluate
from rcnn_cli.boxes import ImageDetections

A, B, C, FAR = [10, 10, 50, 50], [0, 0, 40, 40], [20, 20, 60, 80], [60, 60, 99, 99]


def _case():
    recs = [ImageRecord("1", Path("1.jpg"), 100, 100, np.array([A], np.float32), ["cat"]),
            ImageRecord("2", Path("2.jpg"), 100, 100, np.array([B], np.float32), ["dog"]),
            ImageRecord("3", Path("3.jpg"), 100, 100, np.array([C, [0, 0, 5, 5]], np.float32), ["cat", "dog"]),
            ImageRecord("4", Path("4.jpg"), 100, 100)]
    ds = Dataset(Path("."), "test", ["cat", "dog"], recs)
    dets = {
        "1": ImageDetections("1", np.array([A, A], np.float32), np.array([0.9, 0.8]), ["dog", "cat"]),  # box right, class wrong first
        "2": ImageDetections("2", np.array([FAR], np.float32), np.array([0.9]), ["dog"]),  # class right, box wrong
        "3": ImageDetections("3", np.array([C], np.float32), np.array([0.7]), ["cat"]),  # right
    }
    return ds, dets


def test_localization_errors_by_hand():
    ds, dets = _case()
    r = evaluate(ds, dets, metric="loc")
    assert r["num_images"] == 3 and r["images_without_objects"] == 1
    assert r["top1_loc_error"] == pytest.approx(2 / 3)  # images 1 (class wrong) and 2 (box wrong)
    assert r["top5_loc_error"] == pytest.approx(1 / 3)  # image 2 only: image 1's second guess is right
    assert r["top1_cls_error"] == pytest.approx(1 / 3)  # image 1
    assert r["top5_cls_error"] == 0.0
    assert r["gt_known_loc_error"] == pytest.approx(1 / 3)  # image 2; image 3's class is its largest object's
    r = evaluate(ds, dets, metric="loc", iou=0.99)
    assert r["top5_loc_error"] == pytest.approx(1 / 3)  # exact boxes still count


def test_localization_cli(tmp_path, capsys):
    from rcnn_cli.cli import main
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.data.shapes import make_shapes

    root = make_shapes(tmp_path / "single", train=6, test=3, size=96, seed=1, single=True)

    test = load_dataset(root, "test")
    assert all(len(r.boxes) == 1 for r in load_dataset(root, "trainval").records + test.records)
    lines = [json.dumps({"image_id": r.image_id, "detections": [{"label": r.labels[0], "score": 0.9,
                                                               "box": r.boxes[0].tolist()}]}) for r in test.records]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(root), "--split", "test", "-d", str(tmp_path / "d.jsonl"), "--metric", "loc",
              "--json", str(tmp_path / "loc.json")])
    assert e.value.code == 0
    out = json.loads((tmp_path / "loc.json").read_text())
    assert out["top1_loc_error"] == 0.0 and out["gt_known_loc_error"] == 0.0 and out["num_images"] == 3
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image_id": test.records[0].image_id,
                                                    "detections": [{"label": "star", "box": [0, 0, 5, 5]}]}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(root), "--split", "test", "-d", str(tmp_path / "bad.jsonl"), "--metric", "loc"])
    assert e.value.code == 2 and "score" in capsys.readouterr().err
