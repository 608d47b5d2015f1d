"""The package's one home for box operations.

Boxes are ``(N, 4)`` arrays/tensors of ``x1, y1, x2, y2`` in pixels. Overlaps used for training
and proposals are continuous (``torchvision.ops.box_iou``); the evaluation protocol of the PASCAL
VOC devkit counts both end pixels (``+1``) and lives in :func:`voc_iou`.

Box coding (R-CNN's regression targets, shared by Fast and Faster R-CNN) is torchvision's
``BoxCoder``: ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``,
``dw = ww * log(gw / pw)``, ``dh = wh * log(gh / ph)`` with centres and sizes ``w = x2 - x1``.
R-CNN uses weights ``(1, 1, 1, 1)``; Fast/Faster R-CNN normalise targets by stds
``(0.1, 0.1, 0.2, 0.2)``, i.e. weights ``(10, 10, 5, 5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageDetections",
    "iou_matrix",
    "voc_iou",
    "encode",
    "decode",
    "box_problems",
    "valid_box_mask",
    "scale_boxes",
    "resize_boxes",
    "flip_boxes",
    "to_yolo_boxes",
    "from_yolo_boxes",
    "clip_boxes",
    "BBOX_CLIP",
]

#: Upper bound on ``dw``/``dh`` before ``exp`` when decoding, as in torchvision.
BBOX_CLIP = math.log(1000.0 / 16)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1, 4))


def iou_matrix(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Continuous IoU between ``a (N, 4)`` and ``b (M, 4)`` as a float32 ``(N, M)`` numpy array."""
    from torchvision.ops import box_iou

    ta, tb = _as_tensor(a).float(), _as_tensor(b).float()
    if len(ta) == 0 or len(tb) == 0:
        return np.zeros((len(ta), len(tb)), dtype=np.float32)
    return box_iou(ta, tb).numpy()


def voc_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one box ``(4,)`` with ``gts (M, 4)`` as the VOC devkit computes it (float64).

    Widths and heights count both end pixels: ``w = x2 - x1 + 1``. For pairs, ``box`` may be
    ``(4, P)`` (boxes as columns) with ``gts (P, 4)``: the result is then the ``(P,)`` IoUs of
    column ``i`` with row ``i``.
    """
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    ixmin = np.maximum(gts[:, 0], box[0])
    iymin = np.maximum(gts[:, 1], box[1])
    ixmax = np.minimum(gts[:, 2], box[2])
    iymax = np.minimum(gts[:, 3], box[3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inter = iw * ih
    union = (
        (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
        + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
        - inter
    )
    return inter / union


def encode(gt: torch.Tensor, proposals: torch.Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Regression targets ``(N, 4)`` that take ``proposals (N, 4)`` onto matched ``gt (N, 4)``."""
    from torchvision.models.detection._utils import BoxCoder

    coder = BoxCoder(tuple(float(w) for w in weights), bbox_xform_clip=BBOX_CLIP)
    return coder.encode_single(gt.float(), proposals.float())


def decode(deltas: torch.Tensor, proposals: torch.Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Apply ``deltas (N, 4*K)`` to ``proposals (N, 4)``; returns boxes ``(N, 4*K)`` (or ``(N, 4)``)."""
    from torchvision.models.detection._utils import BoxCoder

    coder = BoxCoder(tuple(float(w) for w in weights), bbox_xform_clip=BBOX_CLIP)
    return coder.decode_single(deltas.float(), proposals.float())


def box_problems(boxes: np.ndarray, width: int | None = None, height: int | None = None) -> list[tuple[int, str]]:
    """List ``(index, problem)`` for boxes that are zero-area, inverted or reach outside the image.

    ``problem`` is one of ``"zero-area"`` (x2 == x1 or y2 == y1), ``"inverted"`` (x2 < x1 or
    y2 < y1), ``"out-of-image"`` (a corner outside ``[0, width] x [0, height]``, checked only when
    the size is known).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    problems: list[tuple[int, str]] = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if x2 < x1 or y2 < y1:
            problems.append((i, "inverted"))
        elif x2 == x1 or y2 == y1:
            problems.append((i, "zero-area"))
        if width is not None and height is not None:
            if min(x1, y1, x2, y2) < 0 or max(x1, x2) > width or max(y1, y2) > height:
                problems.append((i, "out-of-image"))
    return problems


def valid_box_mask(boxes: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """The training policy for bad boxes, in one place: ``True`` where a box is kept.

    A box is dropped when it is zero-area or inverted, or when it lies entirely outside the image.
    A box that only reaches past the border is kept (callers clip it to the image).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if width is not None and height is not None:
        inside_x = (np.minimum(boxes[:, 2], width) - np.maximum(boxes[:, 0], 0)) > 0
        inside_y = (np.minimum(boxes[:, 3], height) - np.maximum(boxes[:, 1], 0)) > 0
        keep &= inside_x & inside_y
    return keep


def scale_boxes(boxes, sx: float, sy: float):
    """``(N, 4)`` boxes (numpy or torch) times ``(sx, sy, sx, sy)``: pixels of one image size to another."""
    if type(boxes).__module__.startswith("torch"):  # a tensor (torch is not imported for numpy input)
        import torch

        factors = [sx, sy, sx, sy]
        if any(isinstance(f, torch.Tensor) for f in factors):  # sizes traced by an ONNX export: kept in the graph
            scale = torch.stack([torch.as_tensor(f) for f in factors]).to(dtype=boxes.dtype, device=boxes.device)
        else:
            scale = torch.tensor(factors, dtype=boxes.dtype, device=boxes.device)
        return boxes * scale
    return np.asarray(boxes, np.float32) * np.array([sx, sy, sx, sy], np.float32)


def resize_boxes(boxes, original: tuple[int, int], new: tuple[int, int]):
    """Boxes from an image of ``original`` ``(width, height)`` to one of ``new`` ``(width, height)``."""
    return scale_boxes(boxes, new[0] / original[0], new[1] / original[1])


def to_yolo_boxes(boxes, width: int | float, height: int | float) -> np.ndarray:
    """``(N, 4)`` pixel boxes -> ``(N, 4)`` float64 ``cx, cy, w, h`` normalised by the image size (YOLO labels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
                     (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], axis=1)


def from_yolo_boxes(values, width: int | float, height: int | float) -> np.ndarray:
    """``(N, 4)`` normalised ``cx, cy, w, h`` (YOLO labels) -> ``(N, 4)`` float32 pixel boxes."""
    v = np.asarray(values, np.float64).reshape(-1, 4)
    return np.stack([(v[:, 0] - v[:, 2] / 2) * width, (v[:, 1] - v[:, 3] / 2) * height,
                     (v[:, 0] + v[:, 2] / 2) * width, (v[:, 1] + v[:, 3] / 2) * height], axis=1).astype(np.float32)


def flip_boxes(boxes, width: int | float):
    """Mirror ``(N, 4)`` boxes horizontally in an image ``width`` pixels wide."""
    out = boxes.clone() if hasattr(boxes, "clone") else np.array(boxes, copy=True)
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def vote_boxes(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class NMS at ``iou`` with box voting (Gidaris and Komodakis, 2015): each kept box becomes
    the score-weighted mean of the boxes of its class that overlap it by at least ``iou`` (itself
    included); its score stays its own. ``boxes (N, 4)`` pixels, ``scores (N,)``, ``classes (N,)``
    integers; returns the kept ``(boxes, scores, classes)`` by decreasing score."""
    import torch
    from torchvision.ops import batched_nms, box_iou

    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    s = torch.as_tensor(np.asarray(scores, np.float32).reshape(-1))
    c = torch.as_tensor(np.asarray(classes, np.int64).reshape(-1))
    keep = batched_nms(b, s, c, float(iou))
    near = (box_iou(b[keep], b) >= float(iou)) & (c[keep][:, None] == c[None, :])
    weights = near.float() * s[None, :]
    voted = (weights @ b) / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return voted.numpy(), s[keep].numpy(), c[keep].numpy()


def order_corners(boxes):
    """``(N, 4)`` tensor boxes with ``x1 <= x2`` and ``y1 <= y2`` (a regressed box may come out inverted)."""
    import torch

    return torch.stack([torch.minimum(boxes[:, 0], boxes[:, 2]), torch.minimum(boxes[:, 1], boxes[:, 3]),
                        torch.maximum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 1], boxes[:, 3])], dim=1)


def clip_boxes(boxes: np.ndarray, width: int | float, height: int | float, min_side: float = 0.0) -> np.ndarray:
    """``(N, 4)`` float32 boxes clipped to the image (torchvision's ``clip_boxes_to_image``); with
    ``min_side`` > 0, boxes narrower or shorter than that after clipping are dropped."""
    import torch
    from torchvision.ops import clip_boxes_to_image, remove_small_boxes

    t = clip_boxes_to_image(torch.from_numpy(np.array(boxes, np.float32).reshape(-1, 4)), (int(height), int(width)))
    if min_side > 0:
        t = t[remove_small_boxes(t, float(min_side))]
    return t.numpy()


# ----------------------------------------------------------------------------------------------
# the detections of one image: the core output type (read and written by rcnn_cli.io.detections)
# ----------------------------------------------------------------------------------------------

@dataclass
class ImageDetections:
    """Detections of one image. ``boxes (N, 4)`` float32 pixels, ``scores (N,)`` float32,
    ``labels`` N class names; ``timings`` in seconds per stage ("proposals", "network", "post")."""

    image_id: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    #: Optional ``(N,)`` int64 position of each detection in its source (set by the readers).
    #: Evaluation breaks score ties by it, as the devkit's stable sort keeps a file's line order
    #: (VOC files are per class, so this order can interleave images).
    order: np.ndarray | None = None
    #: Regions the detector scored for this image (None: the method has no proposal stage of its own).
    num_proposals: int | None = None
    #: What the JSON line records beside the boxes (a video frame's ``frame`` and ``time_s``).
    meta: dict[str, Any] = field(default_factory=dict)
    #: The image's ``(width, height)`` in pixels when known (set by the inference loop; YOLO output needs it).
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.image_id = str(self.image_id)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = [str(x) for x in self.labels]
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(f"{self.image_id}: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.labels)} labels")
        if self.order is not None:
            self.order = np.asarray(self.order, dtype=np.int64).reshape(-1)
            if len(self.order) != len(self.scores):
                raise ValueError(f"{self.image_id}: {len(self.order)} order entries for {len(self.scores)} detections")

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageDetections":
        """The detections at ``index`` (in that order), with this image's timings, meta and size."""
        index = np.asarray(index, np.int64).reshape(-1)
        return ImageDetections(self.image_id, self.boxes[index], self.scores[index], [self.labels[i] for i in index],
                               self.timings, num_proposals=self.num_proposals, meta=self.meta, size=self.size)

    @classmethod
    def empty(cls, image_id: str) -> "ImageDetections":
        return cls(image_id, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record of this image (lossless float32 numbers)."""
        boxes = _short_floats(self.boxes.reshape(-1))
        scores = _short_floats(self.scores)
        record: dict[str, Any] = {
            "image_id": self.image_id, **self.meta,
            "detections": [{"label": lab, "score": scores[i], "box": boxes[4 * i:4 * i + 4]}
                           for i, lab in enumerate(self.labels)],
        }
        if self.timings:
            record["timings"] = {k: round(float(v), 6) for k, v in self.timings.items()}
        return record

    def to_dict(self) -> dict[str, Any]:
        """The same record as a JSON line: ``{"image_id", "detections": [{"label", "score", "box"}]}``."""
        return self.to_json()


def _short_floats(values: np.ndarray) -> list[float]:
    """float32 values as Python floats with the shortest decimal that round-trips in float32."""
    return [float(str(v)) for v in np.asarray(values, np.float32).reshape(-1)]
