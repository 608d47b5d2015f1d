"""Drawing detections and plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.boxes import ImageDetections
from rcnn_cli.visualize import (PALETTE, _text_color, class_color, draw_detections, plot_lines,
                                plot_precision_recall)


def test_draw_detections_colours_boxes_by_class_and_keeps_input():
    img = Image.new("RGB", (200, 160), (128, 128, 128))
    before = np.asarray(img).copy()
    det = ImageDetections("x", [[20, 60, 100, 140], [120, 70, 190, 150]], [0.9, 0.4], ["cat", "dog"])
    out = draw_detections(img, det, ["cat", "dog"])
    arr = np.asarray(out)
    assert np.array_equal(np.asarray(img), before) and out.size == img.size  # input untouched
    assert tuple(arr[100, 20]) == PALETTE[0]  # left edge of the cat box, cat colour
    assert tuple(arr[110, 120]) == PALETTE[1]  # left edge of the dog box, dog colour
    assert tuple(arr[100, 60]) == (128, 128, 128)  # inside the box: untouched
    # a label tag (filled with the class colour) sits just above the cat box
    tag = arr[45:60, 20:60].reshape(-1, 3)
    assert (tag == PALETTE[0]).all(axis=1).mean() > 0.3
    # no detections -> an unchanged copy
    empty = draw_detections(img, ImageDetections.empty("x"), ["cat"])
    assert np.array_equal(np.asarray(empty), before)


def test_label_near_top_edge_stays_inside_and_text_contrasts():
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    det = ImageDetections("x", [[0, 0, 63, 63]], [1.0], ["unknown-class"])
    arr = np.asarray(draw_detections(img, det, ["cat"]))
    assert arr.shape == (64, 64, 3)
    color = class_color("unknown-class", ["cat"])
    assert (arr[2:8, 2:20].reshape(-1, 3) == color).all(axis=1).any()  # tag drawn inside the image
    assert _text_color((255, 255, 0)) == (0, 0, 0)  # yellow -> black text
    assert _text_color((0, 0, 128)) == (255, 255, 255)  # navy -> white text


def test_plots_are_written(tmp_path):
    out = plot_lines({"ss fast": (np.array([10, 100, 1000]), np.array([0.3, 0.7, 0.9])),
                      "edge": (np.array([10, 100, 1000]), np.array([0.2, 0.6, 0.95]))},
                     tmp_path / "recall.png", "proposals", "recall", "Recall", logx=True)
    assert Image.open(out).format == "PNG" and Image.open(out).size[0] > 200
    written = plot_precision_recall({"cat": (np.array([0.5, 1.0]), np.array([1.0, 0.5]))}, {"cat": 0.75, "dog": None},
                                    tmp_path / "pr", title="VOC12", classes=["cat", "dog"])
    assert sorted(p.name for p in written) == ["pr_cat.png", "pr_dog.png", "pr_overview.png"]
    assert all(Image.open(p).format == "PNG" for p in written)
    assert not list(tmp_path.rglob("*.tmp"))
