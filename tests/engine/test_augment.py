"""Random crops and mosaics that never cut an object badly (rcnn_cli.engine.augment) and their use in
training items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.engine.augment import VISIBILITY, Tile, crop_boxes, crop_window, mosaic_boxes, mosaic_layout
from rcnn_cli.engine.dataset import DetectionDataset
from rcnn_cli.errors import UserError


def test_crop_boxes_by_hand():
    boxes = np.array([[10, 10, 30, 30], [35, 10, 55, 30], [90, 90, 99, 99]], np.float32)
    kept, keep = crop_boxes(boxes, (20, 0, 60, 40))  # box 0: half inside (0.5 < 0.6) -> dropped
    assert keep.tolist() == [False, True, False]
    np.testing.assert_array_equal(kept, [[15, 10, 35, 30]])  # box 1 whole, in the window's pixels
    kept, keep = crop_boxes(boxes, (14, 0, 60, 40))  # box 0: 16 of 20 wide inside (0.8): clipped
    np.testing.assert_array_equal(kept, [[0, 10, 16, 30], [21, 10, 41, 30]])


def test_windows_never_cut_a_box_below_the_visibility_rule():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 300, (12, 2)).astype(np.float32)
    boxes = np.concatenate([boxes, boxes + rng.uniform(10, 80, (12, 2)).astype(np.float32)], 1)
    found = 0
    for _ in range(200):
        window = crop_window(boxes, 400, 300, rng, 0.4)
        if window is None:
            continue
        found += 1
        x0, y0, x1, y1 = window
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
        assert x1 - x0 >= round(0.4 * 400) and y1 - y0 >= round(0.4 * 300)
        kept, keep = crop_boxes(boxes, window)
        inside = np.clip(np.minimum(boxes[:, 2:], [x1, y1]) - np.maximum(boxes[:, :2], [x0, y0]), 0, None).prod(1)
        seen = inside / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert keep.any() and ((seen == 0) | (seen >= VISIBILITY)).all()  # none cut badly, one at least kept
        assert (kept >= 0).all() and (kept[:, 2] <= x1 - x0).all() and (kept[:, 3] <= y1 - y0).all()
    assert found > 20  # crops do happen
    assert crop_window(boxes, 400, 300, rng, 1.0) is None and crop_window(np.zeros((0, 4)), 400, 300, rng, 0.5) is None


@pytest.fixture
def striped(tmp_path):
    """One 80 x 64 image whose every pixel column holds its x (a crop is visible in the values)."""
    arr = np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (64, 1, 3))
    Image.fromarray(arr).save(tmp_path / "im.png")
    rec = ImageRecord("im", tmp_path / "im.png", 80, 64, np.array([[10, 20, 40, 50], [60, 5, 75, 15]], np.float32),
                      ["a", "b"])
    return Dataset(tmp_path, "train", ["a", "b"], [rec])


def test_a_cropped_item_equals_the_crop_done_by_hand(striped):
    ds = DetectionDataset(striped, flip=False, crop_scale=0.5, seed=1)
    crops = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        image, target = ds[0]
        window = target["crop"]
        if window is None:
            assert image.shape == (3, 64, 80) and target["boxes"].tolist() == [[10, 20, 40, 50], [60, 5, 75, 15]]
            continue
        crops += 1
        x0, y0, x1, y1 = window
        assert image.shape == (3, y1 - y0, x1 - x0)
        assert torch.allclose(image[0, 0] * 255, torch.arange(x0, x1, dtype=torch.float32), atol=1e-3)
        want, keep = crop_boxes(np.array([[10, 20, 40, 50], [60, 5, 75, 15]], np.float32), window)
        np.testing.assert_array_equal(target["boxes"].numpy(), want)
        assert target["labels"].tolist() == [[1, 2][i] for i in np.flatnonzero(keep)]
    assert 0 < crops < 12  # about half the epochs
    box = np.array([[10, 20, 40, 50]], np.float32)
    windows = [DetectionDataset(striped, crop_scale=0.5, seed=s).crop_for(0, box, 80, 64) for s in (1, 1, 2, 3, 4, 5)]
    assert windows[0] == windows[1] and len(set(windows[1:])) > 1  # a pure function of (seed, epoch, index)


# ------------------------------------------------------------------------------------------------
# mosaics


def test_mosaic_boxes_by_hand():
    """Each image's boxes cut to its tile's window by the crop rule, then moved to the tile's origin."""
    tiles = [Tile((20, 10, 60, 40), (0, 0)), Tile((0, 0, 40, 40), (40, 0)),
             Tile((0, 0, 40, 24), (0, 40)), Tile((10, 10, 50, 34), (40, 40))]
    boxes = [np.array([[30, 15, 50, 35], [0, 0, 10, 10]], np.float32),  # whole / outside
             np.array([[30, 30, 50, 50]], np.float32),                  # a quarter inside: dropped
             np.zeros((0, 4), np.float32),
             np.array([[12, 10, 22, 40]], np.float32)]                  # 24 of 30 high inside (0.8): clipped
    kept, masks = mosaic_boxes(boxes, tiles)
    np.testing.assert_array_equal(kept, [[10, 5, 30, 25], [42, 40, 52, 64]])
    assert [m.tolist() for m in masks] == [[True, False], [False], [], [True]]


def test_mosaic_layout_tiles_the_canvas_and_avoids_cutting_objects():
    rng = np.random.default_rng(0)
    sizes = [(100, 80), (120, 90), (40, 30), (100, 80)]
    boxes = [np.array([[10, 10, 20, 20]], np.float32), np.array([[50, 40, 60, 50]], np.float32),
             np.zeros((0, 4), np.float32), np.array([[60, 50, 70, 60], [5, 5, 12, 15]], np.float32)]
    for _ in range(50):
        tiles = mosaic_layout(sizes, boxes, rng)
        covered = np.zeros((80, 100), int)
        for (w, h), tile in zip(sizes, tiles):
            x0, y0, x1, y1 = tile.window
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h  # a window inside its image
            ox, oy = tile.origin
            covered[oy:oy + y1 - y0, ox:ox + x1 - x0] += 1
        assert covered.max() == 1  # tiles never overlap ...
        assert (covered == 0).sum() == 100 * 80 - sum((t.window[2] - t.window[0]) * (t.window[3] - t.window[1])
                                                      for t in tiles)
        big = [t for k, t in enumerate(tiles) if k != 2]
        assert all(t.window[2] - t.window[0] >= 25 and t.window[3] - t.window[1] >= 20 for t in big)  # >= 1/4 side
        _, masks = mosaic_boxes(boxes, tiles)
        for b, tile in zip(boxes, tiles):  # small boxes, easy to place: none is ever cut below the rule
            inside = crop_boxes(b, tile.window, visibility=1e-6)[1]
            assert (inside == crop_boxes(b, tile.window)[1]).all()


@pytest.fixture
def four_colours(tmp_path):
    """Four 60 x 40 images, each one flat colour (k * 50 + 20) with one box."""
    records = []
    for k in range(4):
        Image.new("RGB", (60, 40), (k * 50 + 20,) * 3).save(tmp_path / f"{k}.png")
        records.append(ImageRecord(str(k), tmp_path / f"{k}.png", 60, 40,
                                   np.array([[20, 10, 30, 20]], np.float32), ["abcd"[k]]))
    return Dataset(tmp_path, "train", list("abcd"), records)


def test_a_mosaic_item_shows_each_box_on_its_own_image(four_colours):
    ds = DetectionDataset(four_colours, flip=False, mosaic=1.0, seed=3)
    seen = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        image, target = ds[0]
        assert image.shape == (3, 40, 60) and target["mosaic"][0] == 0 and len(target["mosaic"]) == 4
        sources = target["mosaic"]
        labels = target["labels"].tolist()
        assert len(labels) == len(target["boxes"])
        for box, label in zip(target["boxes"].tolist(), labels):  # a kept box is painted with its image's colour
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            assert (x2 - x1) * (y2 - y1) >= VISIBILITY * 100 - 1e-6
            patch = image[0, y1:y2, x1:x2] * 255
            assert torch.allclose(patch, torch.full_like(patch, (label - 1) * 50 + 20), atol=1e-3)
            assert label - 1 in sources
            seen += 1
    assert seen >= 6
    assert DetectionDataset(four_colours, mosaic=0.0).mosaic_partners(0) == []
    with pytest.raises(UserError, match="--mosaic"):
        DetectionDataset(four_colours, mosaic=1.5)
