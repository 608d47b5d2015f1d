"""YOLO and LabelMe datasets, `rcnn data split`: read everywhere a dataset is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.cli import main
from rcnn_cli.data.inputs import load_dataset
from rcnn_cli.errors import UserError


def _voc_to_yolo(shapes_root: Path, out: Path) -> Path:
    for voc_split, yolo_split in (("trainval", "train"), ("test", "val")):
        with pytest.raises(SystemExit) as e:
            main(["data", "convert", str(shapes_root), "--split", voc_split, "--to", "yolo", "--out", str(out)])
        assert e.value.code == 0
        # the YOLO split takes the VOC split's name; rename it to the usual one
        data = (out / "data.yaml").read_text().replace(f"{voc_split}: images/{voc_split}",
                                                       f"{yolo_split}: images/{voc_split}")
        (out / "data.yaml").write_text(data)
    return out


def test_voc_yolo_voc_round_trip_keeps_boxes_and_classes(shapes_root, tmp_path):
    yolo = _voc_to_yolo(shapes_root, tmp_path / "yolo")
    assert (yolo / "labels" / "trainval").is_dir() and (yolo / "images" / "test").is_dir()
    first = load_dataset(shapes_root, "trainval")
    mid = load_dataset(yolo, "train")
    assert mid.format == "yolo" and mid.classes == first.classes
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", str(yolo), "--split", "train", "--to", "voc", "--out", str(tmp_path / "voc")])
    assert e.value.code == 0
    back = load_dataset(tmp_path / "voc", "train", classes=first.classes)
    a = {r.image_id: r for r in first.records}
    assert set(a) == {r.image_id for r in back.records}
    for r in back.records:
        assert r.labels == a[r.image_id].labels
        np.testing.assert_allclose(r.boxes, a[r.image_id].boxes, atol=0.5)
    line = (yolo / "labels" / "trainval" / f"{first.records[0].image_id}.txt").read_text().splitlines()[0]
    k, cx, cy, w, h = line.split()
    assert int(k) in range(4) and all(0 <= float(v) <= 1 for v in (cx, cy, w, h))


def test_yolo_dataset_trains_detects_and_evaluates(shapes_root, tmp_path):
    yolo = _voc_to_yolo(shapes_root, tmp_path / "yolo")
    run, dets = tmp_path / "run", tmp_path / "dets.jsonl"
    for args in (["faster", "train", str(yolo), "--split", "train", "--out", str(run), "--min-size", "96",
                  "--max-size", "128", "--max-iters", "2", "--epochs", "1", "--weights", "none", "--no-progress"],
                 ["detect", str(yolo), "--split", "val", "--model", str(run), "--out", str(dets), "--no-progress",
                  "--score-threshold", "0.0"],
                 ["evaluate", str(yolo), "--split", "val", "--detections", str(dets)]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0, args[0]
    assert len(dets.read_text().splitlines()) == len(load_dataset(yolo, "val").records) == 4


def test_yolo_bad_labels_are_one_line_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "data.yaml").write_text("names: [cat]\ntrain: images\n")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.5\n")
    rec = load_dataset(tmp_path, "train").records[0]
    np.testing.assert_allclose(rec.boxes, [[20, 10, 30, 30]], atol=1e-4)
    assert rec.labels == ["cat"]
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5 0.2 0.5\n")
    with pytest.raises(UserError, match=r"a.txt:1: class 3 is not in data.yaml"):
        load_dataset(tmp_path, "train")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 x\n")
    with pytest.raises(UserError, match="expected 'class cx cy w h'"):
        load_dataset(tmp_path, "train")
    with pytest.raises(UserError, match="no split 'val'"):
        load_dataset(tmp_path, "val")


def test_labelme_folder_is_read(tmp_path):
    Image.new("RGB", (60, 50)).save(tmp_path / "x.png")
    shapes = [{"label": "dog", "points": [[10, 5], [30, 25]], "shape_type": "rectangle"},
              {"label": "cat", "points": [[40, 10], [50, 12], [45, 30]], "shape_type": "polygon"},
              {"label": "cat", "points": [[1, 1]], "shape_type": "point"}]
    (tmp_path / "x.json").write_text(json.dumps({"imagePath": "x.png", "imageWidth": 60, "imageHeight": 50,
                                                 "shapes": shapes}))
    ds = load_dataset(tmp_path)
    assert ds.format == "labelme" and ds.classes == ["cat", "dog"]
    rec = ds.records[0]
    assert rec.labels == ["dog", "cat"] and rec.path == (tmp_path / "x.png").resolve()
    np.testing.assert_allclose(rec.boxes, [[10, 5, 30, 25], [40, 10, 50, 30]])


def test_data_split_is_stratified_and_repeatable(shapes_root, tmp_path):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(shapes_root, root)
    for _ in range(2):  # the same seed writes the same files
        with pytest.raises(SystemExit) as e:
            main(["data", "split", str(root), "--val", "0.25", "--seed", "3"])
        assert e.value.code == 0
        files = {n: (root / "ImageSets" / "Main" / f"{n}.txt").read_text() for n in ("train", "val")}
        if _ == 0:
            first = files
    assert files == first
    train, val = (set(files[n].split()) for n in ("train", "val"))
    everything = {r.image_id for r in load_dataset(root).records}
    assert train | val == everything and not train & val and len(val) == 3  # 12 images: 1/4 of each stratum
    assert (root / "JPEGImages").is_dir() and len(list((root / "JPEGImages").iterdir())) == 12


def test_data_show_and_info_plots(shapes_root, tmp_path):
    from rcnn_cli.data.browse import box_statistics

    with pytest.raises(SystemExit) as e:
        main(["data", "show", str(shapes_root), "--split", "test", "--out", str(tmp_path / "show"), "--limit", "2"])
    assert e.value.code == 0
    drawn = sorted((tmp_path / "show").glob("*.jpg"))
    assert [p.stem for p in drawn] == ["test_00000", "test_00001"] and Image.open(drawn[0]).size == (128, 128)
    with pytest.raises(SystemExit) as e:
        main(["data", "info", str(shapes_root), "--split", "test", "--plot", str(tmp_path / "plots"), "--json"])
    assert e.value.code == 0
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"box_sizes.png", "aspect_ratios.png"}
    ds = load_dataset(shapes_root, "test")
    stats = box_statistics(ds)
    assert stats["mean_objects_per_image"] == pytest.approx(sum(len(r.labels) for r in ds.records) / 4)
    r = ds.records[0]
    x1, y1, x2, y2 = r.boxes[0]
    assert stats["sizes"][r.labels[0]][0] == pytest.approx(float(np.sqrt((x2 - x1) * (y2 - y1))))
