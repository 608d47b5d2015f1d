"""Training augmentations that never cut an object badly: random crops (zoom-in scale augmentation)
and mosaics of four images.

A crop is a window of the image whose sides are each drawn from ``[min_scale, 1]`` times the
image's, placed at random; the model then resizes it like any image, so its objects come out up to
``1 / min_scale`` times larger (small objects get more cells of the feature map). A window is
accepted only when every box is either outside it or keeps at least ``visibility`` of its area
inside it, and at least one box is kept: no object is left half visible and unlabelled (it would
train as background), none is kept as a sliver. Kept boxes are clipped to the window and shifted
into its pixels. When no window of ``tries`` passes, the image is used whole.

A mosaic (YOLOv4's) fills a canvas the size of the first image with four tiles that meet at a random
centre (each side of each tile at least a quarter of the canvas); tile ``k`` shows a window of image
``k`` at its own scale (so small objects stay as small as they are), placed at random inside it and
against the centre where the image is smaller than its tile. Of up to ``tries`` draws the first that
cuts no object below the visibility rule is taken, else the one that cuts the fewest; boxes follow
the crop rule in each window (:func:`crop_boxes`) and move to the tile's place.

Boxes are ``(N, 4)`` ``x1, y1, x2, y2`` float32 pixels; windows ``(x0, y0, x1, y1)`` whole pixels.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["VISIBILITY", "crop_window", "crop_boxes", "Tile", "mosaic_layout", "mosaic_boxes"]

#: A box inside a crop keeps at least this fraction of its area (the visibility rule).
VISIBILITY = 0.6


def _visible(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``(N,)`` fraction of each box's area inside ``window``."""
    x0, y0, x1, y1 = window
    w = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return w * h / np.maximum(area, 1e-9)


def crop_window(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator, min_scale: float,
                visibility: float = VISIBILITY, tries: int = 20) -> tuple[int, int, int, int] | None:
    """A random window of the ``width x height`` image that passes the visibility rule (see the module
    docstring), or ``None`` (no boxes, ``min_scale >= 1``, or no try passed)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if min_scale >= 1.0 or len(boxes) == 0:
        return None
    for _ in range(int(tries)):
        cw = max(1, int(round(width * rng.uniform(min_scale, 1.0))))
        ch = max(1, int(round(height * rng.uniform(min_scale, 1.0))))
        x0, y0 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
        window = (x0, y0, x0 + cw, y0 + ch)
        seen = _visible(boxes, window)
        if (seen >= visibility).any() and not ((seen > 0) & (seen < visibility)).any():
            return window
    return None


def crop_boxes(boxes: np.ndarray, window: tuple[int, int, int, int], visibility: float = VISIBILITY
               ) -> tuple[np.ndarray, np.ndarray]:
    """The boxes that keep at least ``visibility`` of their area in ``window``, clipped to it and in its
    pixels, and the ``(N,)`` bool mask of the kept ones (to select labels alike)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    x0, y0, x1, y1 = window
    keep = _visible(boxes, window) >= visibility
    out = boxes[keep].copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], x0, x1) - x0
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], y0, y1) - y0
    return out, keep


class Tile(NamedTuple):
    """One image's part of a mosaic: the ``window`` of the image shown (its pixels) and the canvas
    pixel ``(x, y)`` where the window's top-left corner goes."""

    window: tuple[int, int, int, int]
    origin: tuple[int, int]


def _tile(size: tuple[int, int], region: tuple[int, int, int, int], left: bool, top: bool,
          rng: np.random.Generator) -> Tile:
    """A window of an image of ``size`` (width, height) for the canvas ``region``: as large as both allow,
    at a random place in the image, against the mosaic's centre (``left``/``top``: the region lies left
    of / above it) where the image is the smaller."""
    (w, h), (rx0, ry0, rx1, ry1) = size, region
    ww, wh = min(w, rx1 - rx0), min(h, ry1 - ry0)
    x0, y0 = int(rng.integers(0, w - ww + 1)), int(rng.integers(0, h - wh + 1))
    origin = (rx1 - ww if left else rx0, ry1 - wh if top else ry0)
    return Tile((x0, y0, x0 + ww, y0 + wh), origin)


def mosaic_layout(sizes: Sequence[tuple[int, int]], boxes: Sequence[np.ndarray], rng: np.random.Generator,
                  visibility: float = VISIBILITY, tries: int = 20) -> list[Tile]:
    """The four :class:`Tile` of a mosaic of images of ``sizes`` (width, height; the canvas is the first
    one's) holding ``boxes`` (see the module docstring)."""
    width, height = sizes[0]
    best, fewest = None, None
    for _ in range(int(tries)):
        cx = int(round(width * rng.uniform(0.25, 0.75)))
        cy = int(round(height * rng.uniform(0.25, 0.75)))
        regions = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
        tiles = [_tile(size, region, k % 2 == 0, k < 2, rng) for k, (size, region) in enumerate(zip(sizes, regions))]
        cut = 0
        for tile, b in zip(tiles, boxes):
            seen = _visible(np.asarray(b, np.float32).reshape(-1, 4), tile.window)
            cut += int(((seen > 0) & (seen < visibility)).sum())
        if fewest is None or cut < fewest:
            best, fewest = tiles, cut
        if cut == 0:
            break
    return best


def mosaic_boxes(boxes: Sequence[np.ndarray], tiles: Sequence[Tile], visibility: float = VISIBILITY
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The mosaic's ``(M, 4)`` boxes in canvas pixels: each image's boxes kept by :func:`crop_boxes` in
    its tile's window, moved to the tile's origin (in tile order), and each image's ``(N_k,)`` kept mask
    (to select labels alike)."""
    out, masks = [], []
    for b, tile in zip(boxes, tiles):
        kept, keep = crop_boxes(b, tile.window, visibility)
        ox, oy = tile.origin
        out.append(kept + np.array([ox, oy, ox, oy], np.float32))
        masks.append(keep)
    return np.concatenate(out).reshape(-1, 4).astype(np.float32), masks
