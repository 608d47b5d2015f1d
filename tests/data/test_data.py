import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.data.convert import to_coco, to_voc
from rcnn_cli.data.images import load_image
from rcnn_cli.data.info import dataset_info
from rcnn_cli.data.inputs import load_dataset, resolve_inputs
from rcnn_cli.data.shapes import CLASSES, make_shapes
from rcnn_cli.data.voc import load_voc
from rcnn_cli.errors import ImageError, UserError


def write_voc(root: Path, annotations: dict[str, str], split: str = "train", images: bool = True) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        if images:
            Image.new("RGB", (100, 80), (10, 20, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(f"  {i} " for i in annotations) + "\n\n")
    return root


QUIRKY = """<annotation>
  <filename> a.jpg </filename>
  <object><name>  dog </name><difficult>1</difficult>
    <bndbox><xmin> 10.5 </xmin><ymin>20</ymin><xmax>30.25</xmax><ymax>40</ymax></bndbox></object>
  <object><name>cat</name><truncated>1</truncated>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
</annotation>"""


def test_voc_reader_accepts_quirks(tmp_path):
    root = write_voc(tmp_path, {"a": QUIRKY})
    ds = load_voc(root, "train")
    assert ds.classes == ["cat", "dog"]
    rec = ds.records[0]
    assert rec.image_id == "a" and rec.path.name == "a.jpg"
    assert rec.width is None and rec.height is None  # no <size>
    assert rec.labels == ["dog", "cat"]
    np.testing.assert_allclose(rec.boxes, [[10.5, 20, 30.25, 40], [1, 2, 3, 4]])
    assert rec.difficult.tolist() == [True, False]
    assert rec.truncated.tolist() == [False, True]


def test_voc_classes_option_and_unknown_class(tmp_path):
    root = write_voc(tmp_path, {"a": QUIRKY})
    assert load_voc(root, "train", ["dog", "cat", "bird"]).classes == ["dog", "cat", "bird"]
    with pytest.raises(UserError, match="unknown class.*cat"):
        load_voc(root, "train", ["dog"])


def test_voc_errors_are_one_line(tmp_path):
    root = write_voc(tmp_path, {"a": "<annotation><object>"})
    with pytest.raises(UserError, match="malformed XML"):
        load_voc(root, "train")
    with pytest.raises(UserError, match="split 'val' not found"):
        load_voc(root, "val")
    evil = write_voc(tmp_path / "evil", {"b": "<annotation><filename>../../etc/passwd</filename></annotation>"})
    with pytest.raises(UserError, match="escapes the dataset root"):
        load_voc(evil, "train")
    (evil / "ImageSets/Main/up.txt").write_text("../../x\n")
    with pytest.raises(UserError, match="escapes the dataset root"):
        load_voc(evil, "up")


def test_voc_refuses_xml_entity_bombs(tmp_path):
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><annotation><filename>&b;</filename></annotation>'
    root = write_voc(tmp_path, {"a": bomb})
    with pytest.raises(UserError, match="malformed XML"):
        load_voc(root, "train")


def test_training_targets_apply_the_bad_box_policy(tmp_path):
    xml = """<annotation><size><width>100</width><height>80</height></size>
      <object><name>a</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>
      <object><name>a</name><bndbox><xmin>90</xmin><ymin>10</ymin><xmax>120</xmax><ymax>20</ymax></bndbox></object>
      <object><name>b</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
    </annotation>"""
    ds = load_voc(write_voc(tmp_path, {"x": xml}), "train")
    boxes, labels = ds.training_targets(ds.records[0])
    np.testing.assert_allclose(boxes, [[90, 10, 100, 20], [1, 1, 10, 10]])  # zero-area dropped, overhang clipped
    assert labels.tolist() == [1, 2]


def test_coco_reader_keeps_category_ids(tmp_path):
    (tmp_path / "img").mkdir()
    coco = {
        "images": [{"id": 42, "file_name": "p.jpg", "width": 50, "height": 40}, {"id": 7, "file_name": "q.jpg"}],
        "annotations": [{"id": 1, "image_id": 42, "category_id": 18, "bbox": [1, 2, 10, 20]},
                        {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
    }
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(coco))
    ds = load_dataset(path, images=tmp_path / "img")
    assert ds.classes == ["car", "dog"]  # category id order
    assert ds.category_ids == {"car": 3, "dog": 18}
    rec = ds.by_id()["p"]
    assert rec.coco_id == 42 and rec.width == 50
    np.testing.assert_allclose(rec.boxes, [[1, 2, 11, 22], [0, 0, 5, 5]])
    assert rec.difficult.tolist() == [False, True]  # crowd is ignored like difficult
    assert len(ds.by_id()["q"].labels) == 0
    path.write_text('{"images": [}')
    with pytest.raises(UserError, match="malformed JSON"):
        load_dataset(path)


def test_voc_coco_round_trip(tmp_path, shapes_root):
    ds = load_voc(shapes_root, "test")
    to_coco(ds, tmp_path / "test.json")
    back = load_dataset(tmp_path / "test.json", images=shapes_root / "JPEGImages")
    assert back.classes == ds.classes
    for a, b in zip(ds.records, back.records):
        assert a.image_id == b.image_id and a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes)
    voc = to_voc(back, tmp_path / "voc", split="test")
    again = load_voc(voc, "test")
    assert [r.image_id for r in again.records] == [r.image_id for r in ds.records]
    np.testing.assert_allclose(again.records[0].boxes, ds.records[0].boxes)
    assert (voc / "JPEGImages" / ds.records[0].path.name).read_bytes() == ds.records[0].path.read_bytes()


def test_shapes_are_deterministic_and_valid(tmp_path, shapes_root):
    again = make_shapes(tmp_path / "again", train=8, test=4, size=128, seed=0)
    for f in sorted((shapes_root / "JPEGImages").iterdir()):
        assert (again / "JPEGImages" / f.name).read_bytes() == f.read_bytes()
    other = make_shapes(tmp_path / "other", train=1, test=0, size=128, seed=1)
    assert (other / "JPEGImages/trainval_00000.jpg").read_bytes() != (shapes_root / "JPEGImages/trainval_00000.jpg").read_bytes()
    ds = load_voc(shapes_root, "trainval")
    assert set(ds.classes) <= set(CLASSES) and len(ds) == 8
    info = dataset_info(ds)
    assert info["problems"] == [] and info["image_sizes"] == {"128x128": 8}
    assert all(len(r.labels) >= 1 for r in ds.records)


def test_info_reports_problems(tmp_path):
    zero = "<object><name>a</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    inverted = "<object><name>a</name><bndbox><xmin>9</xmin><ymin>5</ymin><xmax>3</xmax><ymax>9</ymax></bndbox></object>"
    outside = "<object><name>a</name><bndbox><xmin>90</xmin><ymin>70</ymin><xmax>120</xmax><ymax>79</ymax></bndbox></object>"
    size = "<size><width>64</width><height>64</height></size>"
    root = write_voc(tmp_path, {"x": f"<annotation>{size}{zero}{inverted}{outside}</annotation>",
                                "y": f"<annotation>{size}{inverted}</annotation>"})
    (root / "JPEGImages" / "y.jpg").unlink()
    info = dataset_info(load_voc(root, "train"))
    # x.jpg is really 100x80 (the XML says 64x64): the box reaching x=120 is out of the image.
    assert info["problem_counts"] == {"size-mismatch": 1, "zero-area": 1, "inverted": 2,
                                      "out-of-image": 1, "missing-image": 1}
    assert {"image_id": "x", "problem": "zero-area", "label": "a", "box": [5.0, 5.0, 5.0, 5.0]} in info["problems"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((10, 20), 65535, np.uint16))
    else:
        img = base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":
        assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]  # full 16-bit range -> full 8-bit range


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def _gradient(width: int, height: int) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def test_large_images_are_decoded_no_smaller_than_the_network_needs(tmp_path):
    from rcnn_cli.data.images import fit_image, load_image_for, network_size, reduction

    assert network_size(4000, 3000, 480, 736) == pytest.approx((640, 480))
    assert reduction(4000, 3000, 480, 736) == 6 and reduction(500, 375, 480, 736) == 1
    assert reduction(1000, 200, 100, 300) == 3  # the longer side's cap decides: 300 x 60
    _gradient(1600, 1200).save(tmp_path / "big.jpg", quality=95)
    image, scale = load_image_for(tmp_path / "big.jpg", 300, 500)  # network: 400 x 300, DCT scaling 1/4
    assert image.size == (400, 300) and scale == (0.25, 0.25)
    full = np.asarray(load_image(tmp_path / "big.jpg").reduce(4), np.float32)
    assert np.abs(np.asarray(image, np.float32) - full).mean() < 2  # the same picture
    _gradient(1000, 600).save(tmp_path / "big.png")
    image, scale = load_image_for(tmp_path / "big.png", 100, 1000)  # network 167 x 100: box filter by 6
    assert image.size == (167, 100) and scale == (1 / 6, 1 / 6)
    image, k = fit_image(_gradient(1001, 600), 100, 1000)  # the last pixel covers 5 of 1001: still 1/6
    assert image.size == (167, 100) and k == 6
    image, scale = load_image_for(tmp_path / "big.png", 400, 1000)  # not twice the network's size
    assert image.size == (1000, 600) and scale == (1.0, 1.0)
    img = _gradient(1600, 800)
    exif = img.getexif()
    exif[0x0112] = 6  # shown rotated: 800 x 1600
    img.save(tmp_path / "r.jpg", exif=exif)
    image, scale = load_image_for(tmp_path / "r.jpg", 200, 400)
    assert image.size == (200, 400) and scale == (0.25, 0.25)


def test_detection_dataset_shrinks_large_images_with_their_boxes(tmp_path):
    from rcnn_cli.data.dataset import Dataset, ImageRecord
    from rcnn_cli.engine.dataset import DetectionDataset

    _gradient(1600, 1200).save(tmp_path / "big.jpg")
    rec = ImageRecord("big", tmp_path / "big.jpg", 1600, 1200, np.array([[400, 300, 800, 600], [1500, 1000, 1700, 1300]],
                      np.float32), ["a", "a"])
    ds = Dataset(tmp_path, "x", ["a"], [rec])
    image, target = DetectionDataset(ds, flip=False, fit=(300, 500))[0]
    assert tuple(image.shape) == (3, 300, 400)
    assert target["boxes"].tolist() == [[100, 75, 200, 150], [375, 250, 400, 300]]  # clipped to the image
    image, target = DetectionDataset(ds, flip=False)[0]
    assert tuple(image.shape) == (3, 1200, 1600) and target["boxes"][0].tolist() == [400, 300, 800, 600]


def test_color_jitter_scales_a_grey_image_by_the_items_brightness_factor(tmp_path):
    import torch

    from rcnn_cli.data.dataset import Dataset, ImageRecord
    from rcnn_cli.engine.dataset import DetectionDataset

    Image.new("RGB", (40, 30), (128, 128, 128)).save(tmp_path / "grey.png")
    rec = ImageRecord("grey", tmp_path / "grey.png", 40, 30, np.array([[5, 5, 20, 20]], np.float32), ["a"])
    ds = Dataset(tmp_path, "x", ["a"], [rec])
    plain, _ = DetectionDataset(ds, flip=False)[0]
    jit = DetectionDataset(ds, flip=False, color_jitter=0.3, seed=1)
    seen = []
    for epoch in range(4):
        jit.set_epoch(epoch)
        image, target = jit[0]
        # grey: contrast (a blend with the mean) and saturation (with the grey image) leave it; brightness scales it
        b = np.random.default_rng([1, epoch, 0, 1]).uniform(0.7, 1.3, 3)[0]
        assert torch.allclose(image, plain * b, atol=1e-3) and target["boxes"].tolist() == [[5, 5, 20, 20]]
        assert torch.equal(jit[0][0], image)  # the same item of the same epoch: the same picture
        seen.append(float(image.mean()))
    assert len(set(np.round(seen, 4))) == 4 and all(0.7 * 0.5 < v < 1.3 * 0.51 for v in seen)
    with pytest.raises(UserError, match="--color-jitter"):
        DetectionDataset(ds, color_jitter=1.0)


def test_hue_jitter_turns_a_red_image_by_the_items_hue_shift(tmp_path):
    import colorsys

    import torch

    from rcnn_cli.data.dataset import Dataset, ImageRecord
    from rcnn_cli.engine.dataset import DetectionDataset

    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    rec = ImageRecord("red", tmp_path / "red.png", 20, 10, np.array([[2, 2, 8, 8]], np.float32), ["a"])
    ds = DetectionDataset(Dataset(tmp_path, "x", ["a"], [rec]), flip=False, hue_jitter=0.4, seed=2)
    for epoch in range(3):
        ds.set_epoch(epoch)
        image, _ = ds[0]
        rng = np.random.default_rng([2, epoch, 0, 1])
        rng.uniform(1, 1, 3)  # the brightness, contrast and saturation factors come first
        want = colorsys.hsv_to_rgb(rng.uniform(-0.4, 0.4) % 1.0, 1.0, 1.0)
        assert torch.allclose(image[:, 5, 5], torch.tensor(want, dtype=torch.float32), atol=2e-3), epoch
    with pytest.raises(UserError, match="--hue-jitter"):
        DetectionDataset(ds.dataset, hue_jitter=0.6)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: image file not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg: corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def test_resolve_inputs_all_forms(tmp_path, shapes_root):
    imgs = sorted((shapes_root / "JPEGImages").glob("test_*.jpg"))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in imgs[:2]) + "\n# comment\n\n")
    assert [i.image_id for i in resolve_inputs([str(listing)])] == ["test_00000", "test_00001"]
    assert len(resolve_inputs([str(shapes_root / "JPEGImages")])) == 12
    assert len(resolve_inputs([str(shapes_root / "JPEGImages" / "test_*.jpg")])) == 4
    stdin = io.StringIO(f"{imgs[3]}\n{imgs[3]}\n")
    assert [i.image_id for i in resolve_inputs(["-"], stdin=stdin)] == ["test_00003"]
    from_ds = resolve_inputs([str(shapes_root)], split="test")
    assert [i.image_id for i in from_ds] == [p.stem for p in imgs]
    with pytest.raises(UserError, match="no such file"):
        resolve_inputs([str(tmp_path / "nope.jpg")])


# ------------------------------------------------------------------ truncated JPEGs (decoded with a warning)


def _jpeg(tmp_path, name="full.jpg", size=(96, 64)):
    import numpy as np

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(arr).save(path, quality=90)
    return path


def test_truncated_jpeg_loads_with_one_warning_and_strict_refuses(tmp_path, caplog):
    import logging

    from rcnn_cli.data.images import inspect_image, load_image

    full = _jpeg(tmp_path)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:-20])
    with caplog.at_level(logging.WARNING, logger="rcnn"):
        img = load_image(cut)
        load_image(cut)  # the second decode does not warn again
    assert img.size == (96, 64) and img.mode == "RGB"
    warnings = [r for r in caplog.records if "cut.jpg" in r.getMessage()]
    assert len(warnings) == 1 and "truncated" in warnings[0].getMessage()
    with pytest.raises(ImageError, match="truncated"):
        load_image(cut, strict=True)
    assert "truncated" in inspect_image(cut) and inspect_image(full) is None
    third = tmp_path / "third.jpg"
    third.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 3])
    assert load_image(third).size == (96, 64)  # Pillow returns the full size, the rest grey
    with pytest.raises(ImageError):
        load_image(third, strict=True)
    empty, text = tmp_path / "empty.jpg", tmp_path / "text.jpg"
    empty.write_bytes(b"")
    text.write_text("not an image")
    for bad in (empty, text):
        with pytest.raises(ImageError, match="not a readable image"):
            load_image(bad)


def test_strict_images_reaches_every_command(tmp_path, monkeypatch):
    from rcnn_cli.data import images as I

    monkeypatch.setenv("RCNN_STRICT_IMAGES", "0")
    full = _jpeg(tmp_path)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:-20])
    I.set_strict_images(True)
    try:
        with pytest.raises(ImageError):
            I.load_image(cut)
    finally:
        I.set_strict_images(False)
    assert I.load_image(cut).size == (96, 64)


def test_detect_writes_a_line_for_a_truncated_image_and_data_info_lists_it(tmp_path):
    import json
    import shutil

    from rcnn_cli.data.info import dataset_info
    from rcnn_cli.data.voc import load_voc
    from rcnn_cli.detector import DetectConfig
    from rcnn_cli.workflows.detect import detect

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "runs_e8b1e22"
    images = sorted((fixture / "images").glob("*.jpg"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    victim = folder / images[0].name
    victim.write_bytes(victim.read_bytes()[:-20])
    out = tmp_path / "dets.jsonl"
    result = detect([str(folder)], fixture / "faster", config=DetectConfig(score_threshold=0.001), out=str(out),
                    device="cpu", progress=False)
    assert result["images"] == 2 and result["skipped"] == 0
    assert [json.loads(x)["image_id"] for x in out.read_text().splitlines()] == [p.stem for p in images]
    root = make_shapes(tmp_path / "voc", train=2, test=1, size=64, seed=1)
    jpg = next((root / "JPEGImages").glob("test_*.jpg"))
    jpg.write_bytes(jpg.read_bytes()[:-20])
    info = dataset_info(load_voc(root, "test"))
    assert info["problem_counts"] == {"truncated-image": 1}
