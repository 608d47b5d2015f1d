"""Random crops for training that never cut an object badly (zoom-in scale augmentation).

A crop is a window of the image whose sides are each drawn from ``[min_scale, 1]`` times the
image's, placed at random; the model then resizes it like any image, so its objects come out up to
``1 / min_scale`` times larger (small objects get more cells of the feature map). A window is
accepted only when every box is either outside it or keeps at least ``visibility`` of its area
inside it, and at least one box is kept: no object is left half visible and unlabelled (it would
train as background), none is kept as a sliver. Kept boxes are clipped to the window and shifted
into its pixels. When no window of ``tries`` passes, the image is used whole.

Boxes are ``(N, 4)`` ``x1, y1, x2, y2`` float32 pixels; windows ``(x0, y0, x1, y1)`` whole pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VISIBILITY", "crop_window", "crop_boxes"]

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
