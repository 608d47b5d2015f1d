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
    """The whole VOC dataset as YOLO: its splits (trainval, test) become YOLO splits."""
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", str(shapes_root), "--to", "yolo", "--out", str(out)])
    assert e.value.code == 0
    return out


def _ids(ds) -> list[str]:
    return [r.image_id for r in ds.records]


def test_voc_yolo_voc_round_trip_keeps_splits_boxes_and_classes(shapes_root, tmp_path):
    yolo = _voc_to_yolo(shapes_root, tmp_path / "yolo")
    assert (yolo / "labels" / "trainval").is_dir() and (yolo / "images" / "test").is_dir()
    first = load_dataset(shapes_root, "trainval")
    mid = load_dataset(yolo, "trainval")
    assert mid.format == "yolo" and mid.classes == first.classes
    assert _ids(load_dataset(yolo, "test")) == _ids(load_dataset(shapes_root, "test"))
    with pytest.raises(SystemExit) as e:  # every split back, no --split
        main(["data", "convert", str(yolo), "--to", "voc", "--out", str(tmp_path / "voc")])
    assert e.value.code == 0
    for split in ("trainval", "test"):
        assert (tmp_path / "voc" / "ImageSets" / "Main" / f"{split}.txt").read_text().split() == \
            _ids(load_dataset(shapes_root, split))
    back = load_dataset(tmp_path / "voc", "trainval", classes=first.classes)
    a = {r.image_id: r for r in first.records}
    assert set(a) == {r.image_id for r in back.records}
    for r in back.records:
        assert r.labels == a[r.image_id].labels
        np.testing.assert_allclose(r.boxes, a[r.image_id].boxes, atol=0.5)
    line = (yolo / "labels" / "trainval" / f"{first.records[0].image_id}.txt").read_text().splitlines()[0]
    k, cx, cy, w, h = line.split()
    assert int(k) in range(4) and all(0 <= float(v) <= 1 for v in (cx, cy, w, h))


def test_convert_carries_overlapping_voc_splits_and_coco_per_split(shapes_root, tmp_path):
    import shutil

    from rcnn_cli.data.convert import convert_dataset

    root = tmp_path / "voc"
    shutil.copytree(shapes_root, root)
    ids = _ids(load_dataset(root, "trainval"))
    main_dir = root / "ImageSets" / "Main"
    (main_dir / "train.txt").write_text("\n".join(ids[:5]) + "\n")
    (main_dir / "val.txt").write_text("\n".join(ids[5:]) + "\n")
    convert_dataset(root, tmp_path / "yolo", "yolo")
    data = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "trainval:\n- images/train\n- images/val" in data  # the union, not a copy
    for split in ("train", "val", "trainval", "test"):
        assert sorted(_ids(load_dataset(tmp_path / "yolo", split))) == sorted(_ids(load_dataset(root, split)))
    result = convert_dataset(root, tmp_path / "coco" / "shapes.json", "coco")
    assert result["splits"] == {"test": 4, "train": 5, "trainval": 8, "val": 3}
    test = json.loads((tmp_path / "coco" / "shapes_test.json").read_text())
    assert sorted(Path(im["file_name"]).stem for im in test["images"]) == sorted(_ids(load_dataset(root, "test")))


def test_convert_refuses_the_source_and_folders_with_files(shapes_root, tmp_path):
    from rcnn_cli.data.convert import convert_dataset

    with pytest.raises(UserError, match="is \\(or holds\\) the source dataset"):
        convert_dataset(shapes_root, shapes_root, "voc")
    with pytest.raises(UserError, match="already holds files"):
        convert_dataset(shapes_root, shapes_root / "JPEGImages", "yolo")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds files"):
        convert_dataset(shapes_root, mine, "yolo")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        convert_dataset(shapes_root, tmp_path / "x.json", "coco", split="test")
    assert (tmp_path / "x.json").read_text() == "{}"


def test_convert_from_coco_refuses_when_no_image_is_found(shapes_root, tmp_path):
    from rcnn_cli.data.convert import convert_dataset

    convert_dataset(shapes_root, tmp_path / "s.json", "coco", split="test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", str(tmp_path / "s.json"), "--images", str(empty), "--to", "voc",
              "--out", str(tmp_path / "voc")])
    assert e.value.code == 2 and not (tmp_path / "voc").exists()
    some = tmp_path / "some"
    some.mkdir()
    first = load_dataset(shapes_root, "test").records[0].path
    (some / first.name).write_bytes(first.read_bytes())
    result = convert_dataset(tmp_path / "s.json", tmp_path / "voc2", "voc", images=some)
    assert result["images"] == 4 and len(list((tmp_path / "voc2" / "JPEGImages").iterdir())) == 1
    assert len(list((tmp_path / "voc2" / "Annotations").iterdir())) == 4


def test_yolo_dataset_trains_detects_and_evaluates(shapes_root, tmp_path):
    yolo = _voc_to_yolo(shapes_root, tmp_path / "yolo")
    run, dets = tmp_path / "run", tmp_path / "dets.jsonl"
    for args in (["faster", "train", str(yolo), "--split", "trainval", "--out", str(run), "--min-size", "96",
                  "--max-size", "128", "--max-iters", "2", "--epochs", "1", "--weights", "none", "--no-progress"],
                 ["detect", str(yolo), "--split", "test", "--model", str(run), "--out", str(dets), "--no-progress",
                  "--score-threshold", "0.0"],
                 ["evaluate", str(yolo), "--split", "test", "--detections", str(dets)]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0, args[0]
    assert len(dets.read_text().splitlines()) == len(load_dataset(yolo, "test").records) == 4


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


def test_data_split_keeps_the_test_split_and_is_repeatable(shapes_root, tmp_path):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(shapes_root, root)
    test_before = (root / "ImageSets" / "Main" / "test.txt").read_text()
    for _ in range(2):  # the same seed writes the same files (an unchanged file is no overwrite)
        with pytest.raises(SystemExit) as e:
            main(["data", "split", str(root), "--val", "0.25", "--seed", "3"])
        assert e.value.code == 0
        files = {n: (root / "ImageSets" / "Main" / f"{n}.txt").read_text() for n in ("train", "val")}
        if _ == 0:
            first = files
    assert files == first
    train, val = (set(files[n].split()) for n in ("train", "val"))
    test = set(test_before.split())
    assert (root / "ImageSets" / "Main" / "test.txt").read_text() == test_before
    everything = {r.image_id for r in load_dataset(root).records}
    assert train | val == everything - test and not (train | val) & test and not train & val
    assert len(val) == 2  # 8 images outside test: 1/4 of each stratum
    assert (root / "JPEGImages").is_dir() and len(list((root / "JPEGImages").iterdir())) == 12
    with pytest.raises(SystemExit) as e:  # another seed would overwrite train.txt: refused, nothing written
        main(["data", "split", str(root), "--val", "0.25", "--seed", "4"])
    assert e.value.code == 2 and (root / "ImageSets" / "Main" / "train.txt").read_text() == first["train"]
    with pytest.raises(SystemExit) as e:
        main(["data", "split", str(root), "--test", "0.2", "--train-name", "t2", "--val-name", "v2"])
    assert e.value.code == 2 and not (root / "ImageSets" / "Main" / "t2.txt").exists()


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


def _roboflow(root: Path) -> Path:
    """A Roboflow YOLO export: ``train: ../train/images``, ``val: ../valid/images``, an unnamed test/."""
    for folder, n in (("train", 3), ("valid", 2), ("test", 1)):
        (root / folder / "images").mkdir(parents=True)
        (root / folder / "labels").mkdir()
        for i in range(n):
            Image.new("RGB", (100, 50)).save(root / folder / "images" / f"{folder}{i}.jpg")
            (root / folder / "labels" / f"{folder}{i}.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n\nnc: 2\nnames: ['fish', 'shark']\n")
    return root


def test_roboflow_export_reads_like_ultralytics(tmp_path):
    from rcnn_cli.data.inputs import dataset_splits

    root = _roboflow(tmp_path / "rf")
    assert dataset_splits(root / "data.yaml") == ["test", "train", "val"]
    sizes = {s: len(load_dataset(root / "data.yaml", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 1}
    ds = load_dataset(root / "data.yaml", "val")
    assert ds.origins == [str(root / "valid" / "images")]
    np.testing.assert_allclose(ds.records[0].boxes, [[40, 15, 60, 35]], atol=1e-4)
    # a segment line: its box is the polygon's extent; an empty label file: an image without objects
    (root / "train" / "labels" / "train0.txt").write_text("0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")
    (root / "train" / "labels" / "train1.txt").write_text("")
    recs = {r.image_id: r for r in load_dataset(root, "train").records}
    np.testing.assert_allclose(recs["train0"].boxes, [[10, 10, 30, 30]], atol=1e-4)
    assert recs["train0"].labels == ["fish"] and len(recs["train1"].boxes) == 0


def test_roboflow_export_converts_to_voc_and_back_with_every_box(tmp_path):
    from rcnn_cli.data.convert import convert_dataset

    root = _roboflow(tmp_path / "rf")
    convert_dataset(root / "data.yaml", tmp_path / "voc", "voc")
    convert_dataset(tmp_path / "voc", tmp_path / "yolo", "yolo")
    for split in ("train", "val", "test"):
        a, b = load_dataset(root, split), load_dataset(tmp_path / "yolo", split)
        assert _ids(a) == _ids(b)
        for ra, rb in zip(a.records, b.records):
            assert ra.labels == rb.labels
            np.testing.assert_allclose(ra.boxes, rb.boxes, atol=1e-3)


def test_training_split_never_takes_test_images_by_default(shapes_root, tmp_path):
    from rcnn_cli.data.inputs import load_training_dataset, training_split

    assert training_split(shapes_root, None) == "trainval"
    assert training_split(_roboflow(tmp_path / "rf"), None) == "train"
    assert _ids(load_training_dataset(shapes_root, None)) == _ids(load_dataset(shapes_root, "trainval"))
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(shapes_root, odd)
    (odd / "ImageSets" / "Main" / "trainval.txt").rename(odd / "ImageSets" / "Main" / "mine.txt")
    with pytest.raises(UserError, match="defines the splits mine, test: say which one to train on with --split"):
        training_split(odd, None)
    shutil.rmtree(odd / "ImageSets")
    assert training_split(odd, None) is None and len(load_training_dataset(odd, None)) == 12


def test_faster_train_without_split_trains_on_trainval_only(shapes_root, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["faster", "train", str(shapes_root), "--out", str(run), "--min-size", "96", "--max-size", "128",
              "--max-iters", "1", "--epochs", "1", "--weights", "none", "--no-progress"])
    assert e.value.code == 0
    record = json.loads((run / "config.json").read_text())
    assert record["model"]["trained_on"]["split"] == "trainval" and record["model"]["trained_on"]["images"] == 8


def test_split_sizes_hold_when_every_stratum_is_small(tmp_path):
    from rcnn_cli.data.dataset import Dataset, ImageRecord
    from rcnn_cli.data.split import assign_splits

    records = [ImageRecord(f"i{k}", tmp_path / f"i{k}.jpg", 10, 10, np.array([[0, 0, 5, 5]], np.float32), [f"c{k % 8}"])
               for k in range(16)]  # 8 classes, 2 images each: round(0.25 * 2) is 0 in every stratum
    ds = Dataset(tmp_path, None, [f"c{k}" for k in range(8)], records)
    for seed in range(5):
        splits = assign_splits(ds, {"train": 1.0, "val": 0.25, "test": 0.125}, seed=seed)
        assert (len(splits["val"]), len(splits["test"]), len(splits["train"])) == (4, 2, 10)
        assert sorted(sum(splits.values(), [])) == sorted(r.image_id for r in records)
        strata_in_val = {int(i[1:]) % 8 for i in splits["val"]}
        assert len(strata_in_val) == 4  # one image from each of four classes, not two of one


def test_yolo_pose_labels_give_their_box(tmp_path):
    """With ``kpt_shape`` in data.yaml the numbers after the box are keypoints: the box is the first four."""
    root = _roboflow(tmp_path / "rf")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nkpt_shape: [2, 3]\n"
                                    "names: ['fish', 'shark']\n")
    (root / "train" / "labels" / "train0.txt").write_text("1 0.5 0.5 0.2 0.4 0.45 0.4 2 0.55 0.6 1\n")
    rec = {r.image_id: r for r in load_dataset(root, "train").records}["train0"]
    np.testing.assert_allclose(rec.boxes, [[40, 15, 60, 35]], atol=1e-4)
    assert rec.labels == ["shark"]
