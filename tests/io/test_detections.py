"""Detections files: readers on quirky input, writers (streaming, atomic, lossless), run_inference."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.inputs import ImageInput
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.io.detections import coco_image_ids, open_writer, read_detections
from rcnn_cli.errors import UserError
from rcnn_cli.inference import DetectOutput, run_inference


def dataset(classes=("cat", "dog"), ids=("a", "b", "c"), coco_ids=None, category_ids=None):
    records = [ImageRecord(i, Path(f"{i}.jpg"), 100, 80, np.array([[1, 2, 30, 40]], np.float32), [classes[0]],
                           np.zeros(1, bool), np.zeros(1, bool), coco_id=(coco_ids[k] if coco_ids else None))
               for k, i in enumerate(ids)]
    return Dataset(Path("."), "test", list(classes), records, category_ids=dict(category_ids or {}))


# ------------------------------------------------------------------ JSON lines


def test_jsonl_quirks_whitespace_crlf_blank_lines_merge(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\r\n  {"image_id": "a", "detections": [{"label": "cat", "score": 0.5, "box": [1, 2, 3, 4]}]}  \r\n'
                  b'\n{ "image_id" : "b" , "detections" : [ ] }\r\n'
                  b'{"image_id": "a", "detections": [{"label": "dog", "score": 1, "box": [5.5, 6, 7, 8.25]}], "extra": 1}\n')
    d = read_detections(p)
    assert list(d) == ["a", "b"]
    assert d["a"].labels == ["cat", "dog"] and d["a"].scores.tolist() == [0.5, 1.0]
    assert d["a"].boxes.tolist() == [[1, 2, 3, 4], [5.5, 6, 7, 8.25]] and d["a"].boxes.dtype == np.float32
    assert len(d["b"]) == 0 and d["a"].order.tolist() == [0, 1]


@pytest.mark.parametrize("line, message", [
    ('{"image_id": "a", "detections": [{"label": "cat", "score": 0.5, "box": [1, 2, 3]}]}', "4 numbers"),
    ('{"image_id": "a", "detections": [{"label": "cat", "score": "high", "box": [1, 2, 3, 4]}]}', "score is not a number"),
    ('{"image_id": "a", "detections": [{"label": "cat", "score": NaN, "box": [1, 2, 3, 4]}]}', "not finite"),
    ('{"image_id": "a", "detections": [{"label": "cat", "box": [1, 2, 3, 4]}]}', "needs"),
    ('{"image_id": "a", "detections": [{"label": "cat", "score": 0.5', "malformed JSON"),
    ('{"detections": []}', "image_id"),
])
def test_jsonl_malformed_line_is_one_line_error_naming_file_and_line(tmp_path, line, message):
    p = tmp_path / "d.jsonl"
    p.write_text('{"image_id": "a", "detections": []}\n\n' + line + "\n")
    with pytest.raises(UserError) as e:
        read_detections(p)
    text = str(e.value)
    assert f"{p}:3" in text and message in text and "\n" not in text


def test_stdin_and_empty_inputs(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"image_id": 7, "detections": [{"label": "cat", "score": 0.25, "box": [0, 0, 1, 1]}]}\n'))
    d = read_detections("-")
    assert list(d) == ["7"] and d["7"].scores.tolist() == [0.25]
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n\n"))
    assert read_detections("-") == {}
    (tmp_path / "empty.jsonl").write_text("")
    assert read_detections(tmp_path / "empty.jsonl", dataset()) == {}
    with pytest.raises(UserError, match="not found"):
        read_detections(tmp_path / "missing.jsonl")
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(UserError, match="junk.txt:1"):
        read_detections(tmp_path / "junk.txt")


# ------------------------------------------------------------------ COCO results


def test_coco_results_map_ids_through_dataset(tmp_path):
    ds = dataset(ids=("x", "y"), coco_ids=[42, 17], category_ids={"cat": 7, "dog": 3})
    p = tmp_path / "res.json"
    p.write_text(json.dumps([
        {"image_id": 17, "category_id": 3, "bbox": [10, 20, 5, 6], "score": 0.9},
        {"image_id": 42, "category_id": 7, "bbox": [0, 0, 2, 2], "score": 0.1},
    ], indent=2))
    d = read_detections(p, ds)
    assert d["y"].labels == ["dog"] and d["y"].boxes.tolist() == [[10, 20, 15, 26]]
    assert d["x"].labels == ["cat"]
    p.write_text(json.dumps([{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(UserError, match="not in the dataset"):
        read_detections(p, ds)
    assert read_detections(p, ds, ignore_unknown=True) == {}
    p.write_text('[{"image_id": 17, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}]')
    with pytest.raises(UserError, match="result 0"):
        read_detections(p, ds)
    p.write_text('[{"image_id": 17,\n "category_id": 3,,}]')
    with pytest.raises(UserError, match=r"res.json:2"):
        read_detections(p, ds)


def test_coco_image_ids_policy():
    assert coco_image_ids(dataset(ids=("x", "y"), coco_ids=[42, 17])) == {"x": 42, "y": 17}
    assert coco_image_ids(dataset(ids=("000012", "000007"))) == {"000012": 12, "000007": 7}
    assert coco_image_ids(dataset(ids=("b", "a"))) == {"b": 1, "a": 2}


# ------------------------------------------------------------------ VOC comp4 files


def test_voc_folder_quirks_and_class_names_with_underscores(tmp_path):
    ds = dataset(classes=("cat", "traffic_light"))
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "comp4_det_test_cat.txt").write_text("a 0.9 1 2 3 4\n\n  b\t0.5   5 6 7 8  \r\n")
    (folder / "comp4_det_test_traffic_light.txt").write_text("c 0.25 1.5 2.5 3.5 4.5")  # no final newline
    (folder / "comp4_det_val_cat.txt").write_text("zzz 0.9 1 2 3 4\n")  # another split: ignored
    d = read_detections(folder, ds)
    assert d["a"].labels == ["cat"] and d["b"].boxes.tolist() == [[5, 6, 7, 8]]
    assert d["c"].labels == ["traffic_light"] and d["c"].scores.tolist() == [0.25]
    # one file on its own
    single = read_detections(folder / "comp4_det_test_traffic_light.txt", ds)
    assert list(single) == ["c"]
    (folder / "comp4_det_test_cat.txt").write_text("a 0.9 1 2 3 4\nb 0.5 5 6 7\n")
    with pytest.raises(UserError) as e:
        read_detections(folder, ds)
    assert "comp4_det_test_cat.txt:2" in str(e.value) and "got 5 fields" in str(e.value)
    (folder / "comp4_det_test_cat.txt").write_text("a 0.9 1 2 x 4\n")
    with pytest.raises(UserError, match="comp4_det_test_cat.txt:1"):
        read_detections(folder, ds)
    with pytest.raises(UserError, match="no VOC detections files"):
        read_detections(tmp_path / "res" / "..", ds)  # a folder without comp4 files


def test_voc_file_order_breaks_score_ties_like_the_devkit(tmp_path):
    # Ties in score are ranked in the file's line order (MATLAB's stable sort), even when that
    # interleaves images differently from another class's file.
    from rcnn_cli.evaluation import evaluate

    recs = [ImageRecord(i, Path(f"{i}.jpg"), 100, 100, np.array([[0, 0, 9, 9]], np.float32), [c],
                        np.zeros(1, bool), np.zeros(1, bool)) for i, c in (("p", "cat"), ("q", "dog"))]
    ds = Dataset(Path("."), "test", ["cat", "dog"], recs)
    folder = tmp_path / "voc"
    folder.mkdir()
    (folder / "comp4_det_test_cat.txt").write_text("p 0.5 50 50 60 60\n")  # image p seen first
    (folder / "comp4_det_test_dog.txt").write_text("q 0.5 0 0 9 9\np 0.5 50 50 60 60\n")  # TP ranked first
    r = evaluate(ds, read_detections(folder, ds), "voc12")
    assert r["AP"]["dog"] == 1.0  # with image order (p before q) it would be 0.5


# ------------------------------------------------------------------ writers


def _sample():
    return [ImageDetections("000001", [[1.1, 2.2, 30.3, 40.4], [0, 0, 5, 5]], [0.9312345, 0.1], ["cat", "dog"],
                            timings={"network": 0.01}),
            ImageDetections("000002", np.zeros((0, 4)), [], []),
            ImageDetections("000003", [[3, 4, 50.75, 60]], [0.5], ["cat"])]


@pytest.mark.parametrize("fmt", ["jsonl", "coco", "voc"])
def test_writers_round_trip_losslessly(tmp_path, fmt):
    ds = dataset(ids=("000001", "000002", "000003"))
    out = tmp_path / ("out" if fmt == "voc" else f"out.{fmt}")
    with open_writer(out, fmt, ds.classes, coco_image_ids=coco_image_ids(ds)) as w:
        for d in _sample():
            w.write(d)
    back = read_detections(out, ds)
    for d in _sample():
        if len(d) == 0:
            continue
        got = back[d.image_id]
        order = np.lexsort((got.scores,))[::-1]
        ref = np.argsort(-d.scores, kind="stable")
        assert np.array_equal(got.boxes[order], d.boxes[ref])  # float32-exact
        assert np.array_equal(got.scores[order], d.scores[ref])
        assert [got.labels[i] for i in order] == [d.labels[i] for i in ref]
    if fmt == "voc":
        assert sorted(p.name for p in out.iterdir()) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
        assert (out / "comp4_det_test_cat.txt").read_text().splitlines()[0] == "000001 0.9312345 1.1 2.2 30.3 40.4"
    if fmt == "coco":
        first = json.loads(out.read_text())[0]
        assert first["image_id"] == 1 and first["category_id"] == 1 and first["score"] == 0.9312345
        assert first["bbox"] == pytest.approx([1.1, 2.2, 29.2, 38.2], abs=1e-5)  # [x, y, w, h]


def test_jsonl_streams_to_stdout_before_close(capsys):
    with open_writer(None, "jsonl", ["cat", "dog"]) as w:
        w.write(_sample()[0])
        line = capsys.readouterr().out
        assert line.endswith("\n") and json.loads(line) == {
            "image_id": "000001",
            "detections": [{"label": "cat", "score": 0.9312345, "box": [1.1, 2.2, 30.3, 40.4]},
                           {"label": "dog", "score": 0.1, "box": [0.0, 0.0, 5.0, 5.0]}],
            "timings": {"network": 0.01}}


def test_writer_failure_leaves_no_file(tmp_path):
    out = tmp_path / "d.jsonl"
    with pytest.raises(RuntimeError):
        with open_writer(out, "jsonl", ["cat"]) as w:
            w.write(_sample()[0])
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="folder"):
        open_writer(None, "voc", ["cat"])
    with pytest.raises(UserError, match="unknown detections format"):
        open_writer(out, "xml", ["cat"])


# ------------------------------------------------------------------ run_inference


def test_run_inference_streams_skips_bad_images_and_draws(tmp_path):
    images = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (64, 48), (i * 40, 100, 200)).save(p)
        images.append(ImageInput(f"im{i}", p))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images.insert(1, ImageInput("broken", bad))
    images.append(ImageInput("missing", tmp_path / "missing.jpg"))
    seen = []

    def detect(image, image_id):
        seen.append((image_id, image.size, image.mode))
        return ImageDetections(image_id, [[4, 4, 30, 30]], [0.75], ["cat"], timings={"network": 0.002, "post": 0.001})

    out = tmp_path / "out.jsonl"
    result = run_inference(detect, images, DetectOutput(out, "jsonl", draw=tmp_path / "draw"), classes=["cat", "dog"],
                           progress=False)
    assert result["images"] == 3 and result["skipped"] == 2 and result["detections"] == 3
    assert seen == [(f"im{i}", (64, 48), "RGB") for i in range(3)]
    assert result["timings"]["network"]["median"] == pytest.approx(0.002)
    assert {"load", "network", "post", "total"} <= set(result["timings"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["image_id"] for x in lines] == ["im0", "im1", "im2"]
    drawn = Image.open(tmp_path / "draw" / "im0.jpg")
    assert drawn.size == (64, 48)
    with pytest.raises(UserError, match="needs --out"):
        run_inference(detect, images, DetectOutput(None, "coco"), classes=["cat"], progress=False)


def test_detect_settings_out_of_range_are_user_errors():
    from rcnn_cli.detector import DetectConfig
    from rcnn_cli.errors import UserError

    DetectConfig(0.0, 1.0, 1)  # the edges are allowed
    assert DetectConfig().updated(score_threshold=None, nms=0.5) == DetectConfig(0.05, 0.5, 100)
    for kwargs, flag in (({"score_threshold": 1.5}, "--score-threshold"), ({"nms": 0.0}, "--nms"),
                         ({"nms": 1.2}, "--nms"), ({"top_k": 0}, "--top-k")):
        with pytest.raises(UserError, match=flag):
            DetectConfig(**kwargs)


def test_given_detect_settings_go_over_the_runs_own():
    from rcnn_cli.cli.options import detect_config
    from rcnn_cli.detector import DetectConfig, settings_in_effect
    from rcnn_cli.errors import UserError

    own = DetectConfig(0.05, 0.5, 100)  # e.g. a Faster R-CNN run's
    assert settings_in_effect({"score_threshold": 0.2, "nms": None, "top_k": None}, own) == DetectConfig(0.2, 0.5, 100)
    assert settings_in_effect(None, own) == own
    assert settings_in_effect(DetectConfig(0.1, 0.3, 5), own) == DetectConfig(0.1, 0.3, 5)  # a whole config wins
    assert detect_config(None, 0.6, None) == {"score_threshold": None, "nms": 0.6, "top_k": None}
    with pytest.raises(UserError, match="--nms"):
        detect_config(None, 1.5, None)  # refused before any model loads
