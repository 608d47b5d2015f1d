"""``DetectionDataset``: a labelled :class:`~rcnn_cli.data.dataset.Dataset` as a torch dataset for
Fast and Faster R-CNN training.

Items are ``(image, target)``: ``image`` ``(3, H, W)`` float32 in ``[0, 1]`` at the original size
(the models resize internally; with ``fit=(min_side, max_side)``, the model's largest training
size, a large photo comes shrunk to no less than what the model resizes it to, its boxes and
proposals with it: :func:`rcnn_cli.data.images.load_image_for`) and ``target`` ``{"boxes": (M, 4)
float32 pixels, "labels": (M,) int64 in 1..K, "image_id": str, "proposals": (P, 4) float32 (only with a proposals file)}``.
Bad boxes follow the package policy (:meth:`Dataset.training_targets`); images without objects give
``M = 0``. A horizontal flip (probability 0.5) is applied to the image, boxes and proposals alike;
with ``color_jitter=j`` the image's brightness, contrast and saturation are each scaled by a factor
drawn from ``[1 - j, 1 + j]`` (torchvision's ``adjust_*``, in that order); with ``hue_jitter=h`` the
hue is then turned by a fraction of the colour circle drawn from ``[-h, h]`` (YOLO's HSV jitter uses
0.015); with ``crop_scale=s < 1``
half the images are cropped first (:mod:`rcnn_cli.engine.augment`: sides in ``[s, 1]`` times the
image's, no object cut below the visibility rule; proposals clipped to the crop); with ``mosaic=p``
(no proposals) an item is with probability ``p`` a mosaic of its image and three drawn at random
(:func:`rcnn_cli.engine.augment.mosaic_layout`; ``target["mosaic"]`` lists the four indices), then
jittered and flipped as a whole. Every decision is a pure
function of ``(seed, epoch, index)`` so runs, resumes and DDP ranks are reproducible without any
saved RNG state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import load_image, load_image_for, to_tensor
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.boxes import clip_boxes, flip_boxes, scale_boxes
from rcnn_cli.proposals import boxes_for
from rcnn_cli.log import logger

__all__ = ["DetectionDataset", "MOSAIC_FILL"]

#: The colour of a mosaic's canvas where no image reaches: mid-grey, about zero after the backbones'
#: normalisation.
MOSAIC_FILL = (127, 127, 127)


class DetectionDataset(torch.utils.data.Dataset):
    """A detection dataset for the training engine (see the module docstring).

    ``proposals``: a :class:`rcnn_cli.proposals.ProposalReader` or the path of a proposals HDF5 file
    (opened lazily, once per worker process); ``max_proposals`` keeps the top-ranked ones.
    ``keep_difficult``: VOC "difficult" objects are trained on by default (as torchvision does).
    """

    def __init__(self, dataset: Dataset, flip: bool = True, proposals: Any = None, seed: int = 0,
                 max_proposals: int | None = None, keep_difficult: bool = True,
                 fit: tuple[int, int] | None = None, color_jitter: float = 0.0, crop_scale: float = 1.0,
                 mosaic: float = 0.0, hue_jitter: float = 0.0) -> None:
        if not 0.0 <= float(color_jitter) < 1.0:
            raise UserError(f"--color-jitter must be in [0, 1) (got {color_jitter})")
        if not 0.0 <= float(hue_jitter) <= 0.5:
            raise UserError(f"--hue-jitter must be in [0, 0.5] of the colour circle (got {hue_jitter})")
        self.hue_jitter = float(hue_jitter)
        if not 0.0 <= float(mosaic) <= 1.0:
            raise UserError(f"--mosaic must be a probability in [0, 1] (got {mosaic})")
        self.mosaic = float(mosaic)
        self.dataset = dataset
        self.color_jitter = float(color_jitter)
        self.crop_scale = float(crop_scale)
        self.fit = fit
        self.records = list(dataset.records)
        self.flip = flip
        self.seed = int(seed)
        self.epoch = 0
        self.max_proposals = max_proposals
        self.keep_difficult = keep_difficult
        self._reader = None
        self._reader_pid: int | None = None
        self._proposals_path: Path | None = None
        if proposals is None:
            pass
        elif isinstance(proposals, (str, os.PathLike)):
            self._proposals_path = Path(proposals)
            if not self._proposals_path.is_file():
                raise UserError(f"{self._proposals_path}: proposals file not found")
            self._check_coverage(self._open())
        else:
            self._reader = proposals
            self._reader_pid = os.getpid()
            self._check_coverage(proposals)

    @property
    def has_proposals(self) -> bool:
        return self._reader is not None or self._proposals_path is not None

    def _open(self):
        if self._proposals_path is not None and (self._reader is None or self._reader_pid != os.getpid()):
            from rcnn_cli.proposals import load

            self._reader = load(self._proposals_path)
            self._reader_pid = os.getpid()
        return self._reader

    def _check_coverage(self, reader) -> None:
        missing = [r.image_id for r in self.records if r.image_id not in reader]
        if len(missing) == len(self.records):
            raise UserError("the proposals file has none of this split's images (wrong file or split?)")
        if missing:
            logger.warning("%d of %d images have no proposals in the file (e.g. %s); they train on ground truth only",
                           len(missing), len(self.records), missing[0])

    def __getstate__(self) -> dict:  # DataLoader workers: reopen the HDF5 file in each process
        state = dict(self.__dict__)
        if self._proposals_path is not None:
            state["_reader"] = None
            state["_reader_pid"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch: the flips of epoch ``e`` are fixed by ``(seed, e)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def is_flipped(self, index: int) -> bool:
        if not self.flip:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return bool(rng.random() < 0.5)

    def jittered(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """``tensor`` ``(3, H, W)`` in ``[0, 1]`` with item ``index``'s brightness, contrast and
        saturation factors and hue shift of this epoch (unchanged without ``color_jitter`` and
        ``hue_jitter``)."""
        if not self.color_jitter and not self.hue_jitter:
            return tensor
        from torchvision.transforms.v2 import functional as TF

        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        b, c, s = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter, 3)
        hue = rng.uniform(-self.hue_jitter, self.hue_jitter)
        if self.color_jitter:
            tensor = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(tensor, b), c), s)
        return TF.adjust_hue(tensor, hue) if self.hue_jitter else tensor

    def crop_for(self, index: int, boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
        """Item ``index``'s crop window of this epoch (:func:`rcnn_cli.engine.augment.crop_window`), or
        ``None``: no crops, the coin fell the other way, or no window passed."""
        if self.crop_scale >= 1.0:
            return None
        from rcnn_cli.engine.augment import crop_window

        rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        if rng.random() >= 0.5:
            return None
        return crop_window(boxes, width, height, rng, self.crop_scale)

    def proposals_for(self, image_id: str, width: int, height: int) -> np.ndarray:
        """Proposals ``(P, 4)`` float32 for an image, in this image's pixels (rescaled if the file saw
        another size), clipped, degenerate ones dropped."""
        reader = self._open()
        if reader is None or image_id not in reader:
            return np.zeros((0, 4), np.float32)
        boxes = boxes_for(reader, image_id, (width, height))
        if self.max_proposals is not None:
            boxes = boxes[: self.max_proposals]
        return clip_boxes(boxes, width, height, min_side=1e-3)

    def mosaic_partners(self, index: int) -> list[int]:
        """The three other items that item ``index`` is a mosaic with in this epoch (drawn at random), or
        ``[]``: no mosaics, proposals (mosaics are for Faster R-CNN), or the coin fell the other way."""
        if self.mosaic <= 0 or self.has_proposals or len(self.records) < 2:
            return []
        rng = np.random.default_rng([self.seed, self.epoch, index, 3])
        if rng.random() >= self.mosaic:
            return []
        return [int(j) for j in rng.integers(0, len(self.records), 3)]

    def _read(self, index: int):
        """``(index, record, image, boxes, labels)`` of item ``index`` (or of the next readable image, whose
        index is returned): the PIL image as decoded for training and its boxes in its pixels."""
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            record = self.records[i]
            try:
                image, (sx, sy) = load_image_for(record.path, *self.fit) if self.fit else (load_image(record.path), (1, 1))
            except ImageError as e:
                logger.warning("%s; using another image in its place", e)
                continue
            width, height = image.size
            boxes, labels = self.dataset.training_targets(record, width / sx, height / sy,
                                                          keep_difficult=self.keep_difficult)
            if (sx, sy) != (1, 1):
                boxes = clip_boxes(scale_boxes(boxes, sx, sy), width, height)
            return i, record, image, boxes, labels
        raise UserError("no training image could be read")

    def _mosaic(self, index: int, first: tuple, partners: list[int]):
        """Item ``index``'s mosaic (:mod:`rcnn_cli.engine.augment`): ``(image, boxes, labels)``."""
        from rcnn_cli.engine.augment import mosaic_boxes, mosaic_layout

        parts = [first[2:]] + [self._read(j)[2:] for j in partners]
        images, boxes, labels = zip(*parts)
        tiles = mosaic_layout([im.size for im in images], boxes, np.random.default_rng([self.seed, self.epoch, index, 4]))
        canvas = Image.new("RGB", images[0].size, MOSAIC_FILL)
        for im, tile in zip(images, tiles):
            canvas.paste(im.crop(tile.window), tile.origin)
        kept, masks = mosaic_boxes(boxes, tiles)
        return canvas, kept, np.concatenate([np.asarray(lab)[m] for lab, m in zip(labels, masks)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        read = self._read(index)
        index, record, image, boxes, labels = read
        width, height = image.size
        proposals, window = None, None
        partners = self.mosaic_partners(index)
        if partners:
            image, boxes, labels = self._mosaic(index, read, partners)
        else:
            proposals = self.proposals_for(record.image_id, width, height) if self.has_proposals else None
            window = self.crop_for(index, boxes, width, height)
        if window is not None:
            image, boxes, labels, proposals = _cropped(window, image, boxes, labels, proposals)
            width, height = image.size
        tensor = self.jittered(to_tensor(image), index)
        target: dict[str, Any] = {"image_id": record.image_id, "flipped": False, "crop": window,
                                  "mosaic": [index, *partners] if partners else None}
        if self.is_flipped(index):
            tensor = tensor.flip(-1)
            boxes = flip_boxes(boxes, width)
            if proposals is not None:
                proposals = flip_boxes(proposals, width)
            target["flipped"] = True
        target["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4)
        target["labels"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1)
        if proposals is not None:
            target["proposals"] = torch.from_numpy(np.ascontiguousarray(proposals, dtype=np.float32)).reshape(-1, 4)
        return tensor, target


def _cropped(window: tuple[int, int, int, int], image, boxes: np.ndarray, labels: np.ndarray,
             proposals: np.ndarray | None):
    """The image, its boxes with their labels and its proposals cut to ``window`` (in its pixels)."""
    from rcnn_cli.engine.augment import crop_boxes

    kept, keep = crop_boxes(boxes, window)
    if proposals is not None:
        x0, y0, x1, y1 = window
        shifted = np.asarray(proposals, np.float32).reshape(-1, 4) - np.array([x0, y0, x0, y0], np.float32)
        proposals = clip_boxes(shifted, x1 - x0, y1 - y0, min_side=1e-3)
    return image.crop(window), kept, np.asarray(labels)[keep], proposals
