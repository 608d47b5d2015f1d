"""Running a detector over images: load each image, detect, stream the result, optionally draw.

This is what ``rcnn detect``, ``rcnn fast detect`` and ``rcnn faster detect`` call. A detector is
any callable ``detect(image: PIL.Image (RGB), image_id: str) -> ImageDetections`` that fills
``timings`` (seconds per stage: "proposals", "network", "post").
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from rcnn_cli.data.images import load_image
from rcnn_cli.data.inputs import ImageInput
from rcnn_cli.detections import FORMATS, ImageDetections, open_writer
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.log import logger, progress_bar

__all__ = ["run_inference", "timing_summary", "check_detect_settings", "DETECT_DEFAULTS"]

#: Defaults shared by the three detect commands (R-CNN's test-time settings).
DETECT_DEFAULTS: dict[str, Any] = {"score_threshold": 0.05, "nms": 0.3, "top_k": 100, "format": "jsonl"}


def check_detect_settings(score_threshold: float | None = None, nms: float | None = None,
                          top_k: int | None = None) -> None:
    """UserError for a detection setting out of range (``None``: not given, not checked)."""
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"--score-threshold must be in [0, 1] (got {score_threshold})")
    if nms is not None and not 0.0 < nms <= 1.0:
        raise UserError(f"--nms must be an IoU in (0, 1] (got {nms})")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {top_k})")


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


def run_inference(detect: Callable[[Image.Image, str], ImageDetections], inputs: Sequence[ImageInput],
                  out: str | os.PathLike | None = None, fmt: str = "jsonl", classes: Sequence[str] = (),
                  category_ids: Mapping[str, int] | None = None, draw_dir: str | os.PathLike | None = None,
                  progress: bool = True, coco_image_ids: Mapping[str, int] | None = None,
                  split: str = "test") -> dict[str, Any]:
    """Detect objects in every input image and stream the results to ``out`` in ``fmt``.

    Each image is loaded with :func:`rcnn_cli.data.load_image`; an unreadable or missing image is
    logged and skipped. ``jsonl`` lines are written (and flushed) as each image finishes, to stdout
    when ``out`` is None or ``"-"``; ``coco``/``voc`` are written at the end (see
    :func:`rcnn_cli.detections.open_writer`; ``split`` names the VOC files). ``draw_dir`` also
    saves ``<image_id>.jpg`` with the boxes drawn.

    Returns ``{"images": n, "skipped": k, "detections": m, "seconds": s, "images_per_s": r,
    "timings": {stage: {"median": s, "mean": s, "total": s}}}`` with stages from the detector plus
    ``"load"`` (decoding) and ``"total"`` (per image, load to write).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}' (use one of: {', '.join(FORMATS)})")
    if fmt in ("coco", "voc") and (out is None or str(out) == "-"):
        raise UserError(f"--format {fmt} needs --out ({'a file' if fmt == 'coco' else 'a folder'})")
    draw_path = Path(draw_dir) if draw_dir is not None else None
    if draw_path is not None:
        if draw_path.exists() and not draw_path.is_dir():
            raise UserError(f"--draw {draw_path}: not a folder")
        draw_path.mkdir(parents=True, exist_ok=True)
        from rcnn_cli.visualize import draw_detections, save_image
    timings: dict[str, list[float]] = {}
    n_images = n_skipped = n_det = 0
    start = time.perf_counter()
    with open_writer(out, fmt, list(classes), category_ids=category_ids, coco_image_ids=coco_image_ids,
                     split=split) as writer, progress_bar(progress) as bar:
        task = bar.add_task("detect", total=len(inputs), status="")
        for item in inputs:
            t0 = time.perf_counter()
            try:
                image = load_image(item.path)
            except ImageError as e:
                logger.warning("%s; skipped", e)
                n_skipped += 1
                bar.update(task, advance=1, status=f"{n_skipped} skipped")
                continue
            t_load = time.perf_counter() - t0
            det = detect(image, item.image_id)
            if not isinstance(det, ImageDetections):
                raise TypeError(f"detector returned {type(det).__name__}, expected ImageDetections")
            if det.image_id != item.image_id:
                det.image_id = item.image_id
            writer.write(det)
            if draw_path is not None:
                save_image(draw_detections(image, det, list(classes)), draw_path / f"{_draw_name(item.image_id)}.jpg")
            total = time.perf_counter() - t0
            for stage, seconds in {"load": t_load, **det.timings, "total": total}.items():
                timings.setdefault(stage, []).append(float(seconds))
            n_images += 1
            n_det += len(det)
            status = f"{len(det)} dets, {total:.2f} s"
            if n_skipped:
                status += f", {n_skipped} skipped"
            bar.update(task, advance=1, status=status)
    seconds = time.perf_counter() - start
    if n_skipped:
        logger.warning("%d of %d images could not be read and were skipped", n_skipped, len(inputs))
    return {"images": n_images, "skipped": n_skipped, "detections": n_det, "seconds": seconds,
            "images_per_s": n_images / seconds if seconds > 0 else 0.0, "timings": timing_summary(timings)}
