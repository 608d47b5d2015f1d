"""In-memory description of a labelled detection dataset, whatever format it came from.

Class indices: ``0`` is background, ``1..K`` follow ``Dataset.classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn_cli.boxes import valid_box_mask
from rcnn_cli.log import logger


@dataclass
class ImageRecord:
    """One image and its objects. ``boxes`` are ``(N, 4)`` float32 in the file's own coordinates."""

    image_id: str
    path: Path
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: list[str] = field(default_factory=list)
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    coco_id: int | None = None  # the original COCO image id, when read from COCO JSON
    areas: np.ndarray | None = None  # (N,) COCO object areas (segmentation area) for APs/APm/APl; None: box areas


@dataclass
class Dataset:
    """A split of a dataset: its classes (sorted or as given) and image records."""

    root: Path
    split: str | None
    classes: list[str]
    records: list[ImageRecord]
    format: str = "voc"  # "voc" or "coco"
    category_ids: dict[str, int] = field(default_factory=dict)  # class -> original category id
    origins: list[str] = field(default_factory=list)  # the folders or files the split's images came from

    def __post_init__(self) -> None:
        if not self.category_ids:
            self.category_ids = {c: i + 1 for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def class_to_index(self) -> dict[str, int]:
        """Class name -> index ``1..K`` (0 is background)."""
        return {c: i + 1 for i, c in enumerate(self.classes)}

    def by_id(self) -> dict[str, ImageRecord]:
        return {r.image_id: r for r in self.records}

    def training_targets(self, record: ImageRecord, width: int | None = None, height: int | None = None,
                         keep_difficult: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(M, 4)`` float32 (clipped to the image) and class indices ``(M,)`` int64 for training.

        Applies the one bad-box policy of the package (:func:`rcnn_cli.boxes.valid_box_mask`): a
        zero-area, inverted or wholly out-of-image box is skipped with a warning; a box that
        reaches past the border is clipped. Objects of classes not in ``classes`` are skipped too.
        """
        width = width if width is not None else record.width
        height = height if height is not None else record.height
        boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
        keep = valid_box_mask(boxes, width, height)
        index = self.class_to_index
        labels = np.array([index.get(name, 0) for name in record.labels], dtype=np.int64)
        for i in np.flatnonzero(~keep):
            logger.warning("%s: skipping bad box %s (%s) in training", record.image_id,
                           [round(float(v), 1) for v in boxes[i]], record.labels[i])
        keep &= labels > 0
        if not keep_difficult and len(record.difficult):
            keep &= ~record.difficult.astype(bool)
        boxes, labels = boxes[keep], labels[keep]
        if width is not None and height is not None and len(boxes):
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return boxes.astype(np.float32), labels
