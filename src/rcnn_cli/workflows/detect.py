"""``rcnn detect`` for every kind of model: resolve the inputs (files, folders, globs, a dataset split,
a video), load the detector through the registry, stream its detections through the one inference
loop (:func:`rcnn_cli.inference.run_inference`) and record the settings beside the output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from rcnn_cli.detector import DetectSettings, FlipTTA
from rcnn_cli.errors import UserError
from rcnn_cli.inference import DetectOutput, run_inference
from rcnn_cli.registry import load_detector, takes_option

__all__ = ["detect"]


def _dataset_ids(inputs: Sequence[str], split: str | None, images: str | None, classes: Sequence[str]
                 ) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    """COCO category and image ids when the one dataset input is a COCO JSON (kept in the results)."""
    from rcnn_cli.data.inputs import is_dataset, load_dataset
    from rcnn_cli.io.detections import coco_image_ids

    datasets = [i for i in inputs if is_dataset(i)]
    if len(datasets) != 1 or Path(datasets[0]).suffix.lower() != ".json":
        return None, None
    ds = load_dataset(datasets[0], split, images)
    return ({c: ds.category_ids[c] for c in classes if c in ds.category_ids} or None), coco_image_ids(ds)


def _video_inputs(inputs: Sequence[str], every: int):
    """``(VideoFrames, its inputs)`` when the one input is a video, else ``(None, None)``."""
    from rcnn_cli.data.video import VideoFrames, is_video

    videos = [i for i in inputs if is_video(i)]
    if not videos:
        return None, None
    if len(inputs) != 1:
        raise UserError("give one video at a time (or images, folders and datasets without a video)")
    frames = VideoFrames(videos[0], every)
    return frames, frames.inputs


def detect(inputs: Sequence[str], model: str | os.PathLike, split: str | None = None, images: str | None = None,
           config: DetectSettings = None, fmt: str = "jsonl", out: str | None = None,
           draw: str | os.PathLike | None = None, device: str = "auto", progress: bool = True,
           command: str = "rcnn detect", every: int = 1, shard: str | tuple[int, int] | None = None,
           keep_classes: Sequence[str] | None = None, agnostic_nms: float | None = None,
           draw_threshold: float = 0.3, tta: str | None = None, **options: Any) -> dict[str, Any]:
    """``rcnn detect`` for every kind of run: resolve the inputs, load the detector, stream detections.

    A video input gives one line per ``every``-th frame (with ``frame`` and ``time_s``); ``draw``
    ending in ``.mp4`` writes the annotated video. ``shard`` ``K/N`` takes every N-th input from the
    K-th (the shards' outputs concatenated are the whole run's). ``options`` go to the run kind's detector
    (:func:`rcnn_cli.registry.load_detector`). ``keep_classes``, ``agnostic_nms`` and
    ``draw_threshold``: see :class:`DetectOutput`. ``tta="flip"``: test-time flip with box voting
    (:class:`rcnn_cli.detector.FlipTTA`). With ``out`` a file or folder,
    ``<out>.config.json`` records the settings and the summary.
    """
    from rcnn_cli.config import parse_shard
    from rcnn_cli.data.inputs import resolve_inputs
    from rcnn_cli.io.files import write_run_record

    output = DetectOutput(out, fmt, draw, split=split or "test", keep_classes=keep_classes, agnostic_nms=agnostic_nms,
                          draw_threshold=draw_threshold)
    output.check()
    frames, items = _video_inputs(inputs, every)
    if frames is None:
        items = resolve_inputs(list(inputs), split=split, images=images)
    else:
        output.fps = frames.fps / every
    part = parse_shard(shard) if isinstance(shard, str) else shard
    if part is not None:
        items = items[part[0]::part[1]]
    if not items:
        raise UserError("no input images (or a video without frames)")
    if tta not in (None, "flip"):
        raise UserError(f"--tta {tta}: the one test-time augmentation is flip")
    if "runtime" not in options and takes_option(model, "runtime"):
        options["runtime"] = "auto"  # the fastest installed runtime for the CNN (torch on a GPU)
    with load_detector(model, device=device, config=config, **options) as loaded:
        detector = FlipTTA(loaded) if tta == "flip" else loaded
        output.category_ids, output.coco_image_ids = _dataset_ids(inputs, split, images, detector.classes)
        try:
            result = run_inference(detector, items, classes=detector.classes, progress=progress, output=output,
                                   images=frames)
        finally:
            if frames is not None:
                frames.close()
        settings = detector.settings()
    if out not in (None, "-"):
        write_run_record(Path(out), command, {
            "inputs": [str(i) for i in inputs], "split": split, "model": str(model), "format": fmt,
            "classes_kept": list(keep_classes) if keep_classes else None, "agnostic_nms": agnostic_nms,
            "draw_threshold": draw_threshold if draw is not None else None,
            **settings, "options": {k: str(v) if v is not None else None for k, v in options.items()},
            "result": {k: v for k, v in result.items() if k != "per_image"}})
    return result
