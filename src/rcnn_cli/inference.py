"""The one inference loop: images in, detections streamed out.

Everything that runs a detector over images goes through :func:`run_inference`: ``rcnn detect``
(every kind of run, :func:`detect`), validation during training and the pipeline's detect stage
(:func:`detect_dataset`), and the timings of ``rcnn compare`` and the benchmarks
(:func:`rcnn_cli.workflows.timing.time_detector`). One skip policy (an unreadable image is
logged and skipped), one timing (``load``, the detector's stages, ``total`` per image), one set of
writers (:mod:`rcnn_cli.io.detections`), one ``--draw``.

A detector is any callable ``detect(image: PIL.Image (RGB), image_id: str) -> ImageDetections``:
a :class:`rcnn_cli.detector.Detector`, or a plain function in tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rcnn_cli.data.images import load_image
from rcnn_cli.data.inputs import ImageInput
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.io.detections import FORMATS, open_writer
from rcnn_cli.log import logger, progress_bar

__all__ = ["run_inference", "detect_dataset", "timing_summary", "DetectOutput"]

Detect = Callable[[Any, str], ImageDetections]


@dataclass
class DetectOutput:
    """Where detections go: ``out`` (file, folder or ``-``/None for stdout) in ``fmt``; ``draw``
    (folder of drawn images); ids for COCO results (``category_ids``, ``coco_image_ids``); the
    VOC files' ``split``; ``collect`` a dict that receives every image's detections."""

    out: str | os.PathLike | None = None
    fmt: str = "jsonl"
    draw: str | os.PathLike | None = None
    category_ids: Mapping[str, int] | None = None
    coco_image_ids: Mapping[str, int] | None = None
    split: str = "test"
    collect: dict[str, ImageDetections] | None = None
    write: bool = True  # False: collect only, no writer
    fps: float = 25.0  # frames per second of a drawn video (``draw`` ending in a video suffix)
    keep_classes: Sequence[str] | None = None  # only these classes' detections (None: all)
    agnostic_nms: float | None = None  # also NMS across classes at this IoU (None: per class only)
    draw_threshold: float = 0.3  # drawn boxes score at least this (the files keep every detection)

    def check(self) -> None:
        if self.fmt not in FORMATS:
            raise UserError(f"unknown --format '{self.fmt}' (use one of: {', '.join(FORMATS)})")
        if self.write and self.fmt in ("coco", "voc", "yolo") and (self.out is None or str(self.out) == "-"):
            raise UserError(f"--format {self.fmt} needs --out ({'a file' if self.fmt == 'coco' else 'a folder'})")
        if self.agnostic_nms is not None and not 0 < self.agnostic_nms <= 1:
            raise UserError(f"--agnostic-nms IoU must be in (0, 1] (got {self.agnostic_nms})")
        if self.draw is not None and not self.draws_video and Path(self.draw).exists() and not Path(self.draw).is_dir():
            raise UserError(f"--draw {self.draw}: not a folder")

    @property
    def draws_video(self) -> bool:
        from rcnn_cli.data.video import is_video

        return self.draw is not None and is_video(self.draw)

    def drawer(self) -> "_Drawer":
        return _Drawer(self)

    def check_classes(self, classes: Sequence[str]) -> None:
        """``keep_classes`` must name the detector's classes (one line listing them)."""
        unknown = [c for c in self.keep_classes or () if c not in classes]
        if unknown:
            raise UserError(f"--classes {', '.join(unknown)}: not a class of this model ({', '.join(classes)})")

    def select(self, det: ImageDetections) -> ImageDetections:
        """``det`` with only ``keep_classes`` and, with ``agnostic_nms``, one box where classes overlap."""
        keep = np.ones(len(det), bool)
        if self.keep_classes is not None:
            keep &= np.isin(np.asarray(det.labels, dtype=object), list(self.keep_classes))
        index = np.flatnonzero(keep)
        if self.agnostic_nms is not None and len(index):
            import torch
            from torchvision.ops import nms

            kept = nms(torch.from_numpy(det.boxes[index]), torch.from_numpy(det.scores[index]), self.agnostic_nms)
            index = np.sort(index[kept.numpy()])
        return det if len(index) == len(det) else det.subset(index)


def timing_summary(timings: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """``{stage: {"median": s, "mean": s, "total": s}}`` from per-image seconds."""
    out = {}
    for stage, values in timings.items():
        v = np.asarray(values, np.float64)
        if len(v):
            out[stage] = {"median": float(np.median(v)), "mean": float(v.mean()), "total": float(v.sum())}
    return out


def _draw_name(image_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id).lstrip(".") or "image"


class _Drawer:
    """Drawn detections: one JPEG per image in the ``draw`` folder, or the frames of a ``draw`` video."""

    def __init__(self, output: DetectOutput) -> None:
        self.folder = self.video = None
        self.threshold = output.draw_threshold
        if output.draws_video:
            from rcnn_cli.data.video import VideoSink

            self.video = VideoSink(output.draw, output.fps)
        elif output.draw is not None:
            self.folder = Path(output.draw)
            self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, image: Any, det: ImageDetections, classes: Sequence[str]) -> None:
        if self.folder is None and self.video is None:
            return
        from rcnn_cli.visualize import draw_detections, save_image

        drawn = draw_detections(image, det.subset(np.flatnonzero(det.scores >= self.threshold)), list(classes))
        if self.video is not None:
            self.video.write(drawn)
        else:
            save_image(drawn, self.folder / f"{_draw_name(det.image_id)}.jpg")

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


class _NullWriter:
    def write(self, det: ImageDetections) -> None:
        pass

    def __enter__(self) -> "_NullWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _load(item: ImageInput, images: Mapping[str, Any] | None) -> Any:
    """The decoded image of ``item`` (from ``images`` when given there); ImageError when unreadable."""
    if images is not None and item.image_id in images:
        return images[item.image_id]
    return load_image(item.path)


def _run_one(detect: Detect, image: Any, image_id: str, repeats: int) -> tuple[ImageDetections, list[dict]]:
    """``repeats`` calls on one image: the last detections and each call's stage timings."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det = detect(image, image_id)
        call = time.perf_counter() - t0
        if not isinstance(det, ImageDetections):
            raise TypeError(f"detector returned {type(det).__name__}, expected ImageDetections")
        runs.append({**{k: float(v) for k, v in det.timings.items()}, "call": call})
    det.image_id = image_id
    return det, runs


def run_inference(detect: Detect, inputs: Sequence[ImageInput], output: DetectOutput | None = None, *,
                  classes: Sequence[str] = (), progress: bool = True, images: Mapping[str, Any] | None = None,
                  warmup: int = 0, repeats: int = 1) -> dict[str, Any]:
    """Detect objects in every input image and stream the results (see the module docstring).

    ``output`` says where detections go (:class:`DetectOutput`; ``None``: JSON lines on stdout);
    ``jsonl`` lines are written and flushed as each image finishes. ``images`` maps image ids to
    images already decoded (decoding is then not timed). ``warmup`` untimed calls on the first
    image, then ``repeats`` timed calls per image (timings: per image the median over repeats).

    Returns ``{"images", "skipped", "detections", "seconds", "images_per_s", "timings": {stage:
    {"median", "mean", "total"}}, "per_image": [{"image_id", stage: s, "num_proposals"}]}``; stages
    are the detector's plus ``load`` and ``total`` (the whole call) and ``without_proposals``.
    """
    output = output or DetectOutput()
    output.check()
    output.check_classes(classes)
    if warmup < 0 or repeats < 1:
        raise UserError("warm-up must be >= 0 and repeats >= 1")
    writer = (open_writer(output.out, output.fmt, list(classes), category_ids=output.category_ids,
                          coco_image_ids=output.coco_image_ids, split=output.split) if output.write else _NullWriter())
    per_image: list[dict[str, Any]] = []
    n_skipped = n_det = 0
    warmed = warmup == 0
    start = time.perf_counter()
    drawer = output.drawer()
    with writer, progress_bar(progress) as bar:
        task = bar.add_task("detect", total=len(inputs), status="")
        for item in inputs:
            t0 = time.perf_counter()
            try:
                image = _load(item, images)
            except ImageError as e:
                logger.warning("%s; skipped", e)
                n_skipped += 1
                bar.update(task, advance=1, status=f"{n_skipped} skipped")
                continue
            t_load = time.perf_counter() - t0
            if not warmed:
                _run_one(detect, image, item.image_id, warmup)
                warmed = True
            det, runs = _run_one(detect, image, item.image_id, repeats)
            det.meta, det.size = dict(item.meta or {}), getattr(image, "size", None)
            det = output.select(det)
            writer.write(det)
            if output.collect is not None:
                output.collect[item.image_id] = det
            drawer.add(image, det, classes)
            per_image.append(_image_timings(item.image_id, t_load, runs, det.num_proposals))
            n_det += len(det)
            bar.update(task, advance=1, status=f"{len(det)} dets, {per_image[-1]['total']:.2f} s"
                       + (f", {n_skipped} skipped" if n_skipped else ""))
    drawer.close()
    seconds = time.perf_counter() - start
    if n_skipped:
        logger.warning("%d of %d images could not be read and were skipped", n_skipped, len(inputs))
    stages = sorted({k for e in per_image for k in e if k not in ("image_id", "num_proposals")})
    return {"images": len(per_image), "skipped": n_skipped, "detections": n_det, "seconds": seconds,
            "images_per_s": len(per_image) / seconds if seconds > 0 else 0.0,
            "timings": timing_summary({s: [e[s] for e in per_image if s in e] for s in stages}),
            "per_image": per_image}


def _image_timings(image_id: str, t_load: float, runs: list[dict], num_proposals: int | None) -> dict[str, Any]:
    """One image's row: per stage the median over the repeats; ``total`` the whole detector call."""
    stages = sorted({k for r in runs for k in r})
    row: dict[str, Any] = {"image_id": image_id, "load": t_load}
    for s in stages:
        row["total" if s == "call" else s] = float(np.median([r.get(s, 0.0) for r in runs]))
    row["without_proposals"] = row["total"] - row.get("proposals", 0.0)
    row["num_proposals"] = num_proposals
    return row


def detect_dataset(detect: Detect, dataset: Any, classes: Sequence[str], progress: bool = False
                   ) -> dict[str, ImageDetections]:
    """``{image_id: ImageDetections}`` for every readable image of a labelled ``dataset`` (no files)."""
    collected: dict[str, ImageDetections] = {}
    inputs = [ImageInput(r.image_id, r.path) for r in dataset.records]
    run_inference(detect, inputs, classes=classes, progress=progress,
                  output=DetectOutput(collect=collected, write=False))
    return collected
