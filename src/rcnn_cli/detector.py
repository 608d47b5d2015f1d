"""The one detector contract: every method (R-CNN, Fast R-CNN, Faster R-CNN, ...) is a :class:`Detector`.

A detector is built from a run directory by :func:`rcnn_cli.registry.load_detector`, which reads the
run's ``kind`` and calls that method's ``from_run``. The one inference loop
(:func:`rcnn_cli.inference.run_inference`) only ever calls :meth:`Detector.detect`; it never asks a
detector what it is.

``detect(image, image_id) -> ImageDetections``: ``image`` a decoded RGB ``PIL.Image``; boxes in
``x1, y1, x2, y2`` pixels of that image; ``timings`` in seconds per stage (``proposals``,
``network``, ``post``); ``num_proposals`` the regions the network scored (``None`` where a method
has no proposal stage of its own).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from rcnn_cli.errors import UserError

__all__ = ["DetectConfig", "DetectSettings", "REGRESSED_NMS", "settings_in_effect", "Detector", "FlipTTA", "as_image"]


@dataclass(frozen=True)
class DetectConfig:
    """Test-time settings shared by every detector (the one home of their defaults)."""

    score_threshold: float = 0.05  # drop detections scoring below this
    nms: float = 0.3               # per-class NMS IoU: R-CNN's (the paper's); see REGRESSED_NMS
    top_k: int = 100               # detections kept per image

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise UserError(f"--score-threshold must be in [0, 1] (got {self.score_threshold})")
        if not 0.0 < self.nms <= 1.0:
            raise UserError(f"--nms must be an IoU in (0, 1] (got {self.nms})")
        if int(self.top_k) != self.top_k or self.top_k < 1:
            raise UserError(f"--top-k must be a whole number >= 1 (got {self.top_k})")

    def updated(self, **given: Any) -> "DetectConfig":
        """A copy with the values that were given (``None`` means not given)."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in given.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A detector's ``config=``: a whole :class:`DetectConfig`, or ``{name: value}`` given over the run's own.
DetectSettings = DetectConfig | Mapping[str, Any] | None

#: Fast and Faster R-CNN's per-class NMS IoU (torchvision's and Detectron2's): their learned, regressed
#: boxes crowd tightly around each object, and 0.5 keeps a second, better-placed box that 0.3 suppresses.
REGRESSED_NMS = 0.5


def settings_in_effect(given: DetectSettings, own: DetectConfig) -> DetectConfig:
    """The test-time settings a detector uses: ``given`` whole when it is a :class:`DetectConfig`; else
    the run's ``own`` with the values the mapping gives (``None``: not given), e.g. the CLI's flags."""
    if isinstance(given, DetectConfig):
        return given
    return own.updated(**(given or {}))


def as_image(image: Any) -> tuple[Any, str]:
    """``(RGB PIL image, default image id)`` from a path, a ``PIL.Image`` or an ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    from rcnn_cli.data.images import load_image

    if isinstance(image, (str, os.PathLike)):
        return load_image(image), Path(image).stem
    if isinstance(image, Image.Image):
        return (image if image.mode == "RGB" else image.convert("RGB")), "image"
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"an image array must be (H, W, 3) RGB (got shape {image.shape})")
        return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB"), "image"
    raise UserError(f"cannot detect in a {type(image).__name__}: give a path, a PIL image or an (H, W, 3) array")


class Detector:
    """Base class of every detector. Subclasses set ``kind``, ``classes``, ``device``, ``config``
    and implement :meth:`detect` and :meth:`from_run`."""

    kind: ClassVar[str] = ""
    classes: list[str]
    config: DetectConfig

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 **options: Any) -> "Detector":
        raise NotImplementedError

    def propose(self, image: Any, image_id: str) -> np.ndarray | None:
        """Region proposals ``(N, 4)`` pixels for methods that have a proposal stage; else ``None``."""
        return None

    def detect(self, image: Any, image_id: str):
        """Detections of one decoded RGB image (see the module docstring)."""
        raise NotImplementedError

    def __call__(self, image: Any, image_id: str | None = None, *, score_threshold: float | None = None,
                 nms: float | None = None, top_k: int | None = None):
        """``detect`` on a path, a PIL image or an ``(H, W, 3)`` uint8 array, or on a list of them
        (a list of results). ``score_threshold``, ``nms``, ``top_k``: this call's settings over the
        detector's own."""
        if isinstance(image, (list, tuple)):
            return [self(im, score_threshold=score_threshold, nms=nms, top_k=top_k) for im in image]
        decoded, default_id = as_image(image)
        given = {"score_threshold": score_threshold, "nms": nms, "top_k": top_k}
        if all(v is None for v in given.values()):
            return self.detect(decoded, image_id if image_id is not None else default_id)
        own = self.config
        self.configure(own.updated(**given))
        try:
            return self.detect(decoded, image_id if image_id is not None else default_id)
        finally:
            self.configure(own)

    def configure(self, config: DetectConfig) -> None:
        """Use ``config`` from now on (subclasses whose network holds the settings push them there)."""
        self.config = config

    def settings(self) -> dict[str, Any]:
        """The settings in effect, for the record beside every output."""
        return {"kind": self.kind, **self.config.to_dict(), "device": str(getattr(self, "device", "cpu"))}

    def close(self) -> None:
        """Release files the detector holds open (proposal stores)."""

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FlipTTA(Detector):
    """Test-time flip around any detector: ``inner`` on the image and on its mirror image (those
    boxes mirrored back), the two sets merged per class by NMS at the detector's IoU with box voting
    (:func:`rcnn_cli.boxes.vote_boxes`), then cut to ``top_k``. Twice the network time per image."""

    def __init__(self, inner: Detector):
        self.inner = inner
        self.kind, self.classes, self.config = inner.kind, list(inner.classes), inner.config
        self.device = getattr(inner, "device", "cpu")

    def configure(self, config: DetectConfig) -> None:
        self.config = config
        self.inner.configure(config)

    def propose(self, image: Any, image_id: str) -> np.ndarray | None:
        return self.inner.propose(image, image_id)

    def detect(self, image: Any, image_id: str):
        from PIL import ImageOps

        from rcnn_cli.boxes import ImageDetections, flip_boxes, vote_boxes

        plain = self.inner.detect(image, image_id)
        mirrored = self.inner.detect(ImageOps.mirror(image), image_id)
        index = {name: i for i, name in enumerate(self.classes)}
        boxes = np.concatenate([plain.boxes, flip_boxes(mirrored.boxes, image.width)])
        labels = np.asarray([index[name] for name in plain.labels + mirrored.labels], np.int64)
        kept, scores, classes = vote_boxes(boxes, np.concatenate([plain.scores, mirrored.scores]), labels,
                                           self.config.nms)
        top = slice(0, int(self.config.top_k))
        timings = {k: plain.timings.get(k, 0.0) + mirrored.timings.get(k, 0.0)
                   for k in dict.fromkeys([*plain.timings, *mirrored.timings])}
        counts = [d.num_proposals for d in (plain, mirrored) if d.num_proposals is not None]
        return ImageDetections(image_id, kept[top], scores[top], [self.classes[int(c)] for c in classes[top]],
                               timings=timings, num_proposals=sum(counts) if counts else None, meta=plain.meta)

    def settings(self) -> dict[str, Any]:
        return dict(self.inner.settings(), tta="flip")

    def close(self) -> None:
        self.inner.close()
