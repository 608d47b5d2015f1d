"""Timing detectors on decoded images, through the one inference loop (``rcnn compare``, the benchmarks).

:func:`time_detector` runs :func:`rcnn_cli.inference.run_inference` over images already decoded in
memory: warm-up calls on the first image are excluded, then each image runs ``repeats`` times; per
image the median over repeats, then the median over images. ``total`` is the whole detector call,
``without_proposals`` the call minus its proposal stage. The proposals scored per image are the
detector's own ``num_proposals``. :func:`time_in_child` does it in a fresh process (``rcnn compare``
times every method in one spawned child after all training: in the process that trained, heap and
thread state slowed R-CNN by 1.3-1.7x).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.io.files import jsonable
from rcnn_cli.log import logger

__all__ = ["threads_info", "time_detector", "make_detector", "time_in_child", "load_timing_images", "speedups"]

_STAGES = ("proposals", "network", "post", "total", "without_proposals")


def threads_info() -> dict[str, Any]:
    """The threads the timings ran with: torch intra/inter-op, OpenCV, CPU count, OMP/MKL env."""
    import torch

    info: dict[str, Any] = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                            "cpu_count": os.cpu_count()}
    try:
        import cv2

        info["opencv"] = cv2.getNumThreads()
    except Exception:  # noqa: BLE001
        info["opencv"] = None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        try:
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
        except Exception:  # noqa: BLE001
            return device
    import platform

    cpu = platform.processor() or platform.machine()
    return f"{device} ({cpu}, {os.cpu_count()} logical cores)"


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def time_detector(detector, images: Sequence[tuple[str, Any]], warmup: int = 1, repeats: int = 1) -> dict[str, Any]:
    """Per-stage wall times of ``detector(image, image_id) -> ImageDetections`` on decoded images.

    ``images``: ``(image_id, PIL image)`` pairs. Returns ``{"median": {stage: s}, "mean": {stage: s},
    "per_image": [{"image_id", stage: s, "proposals_count"}], "proposals_per_image" (median count
    or None), "images", "warmup", "repeats", "device", "device_name", "threads"}``; a stage the
    detector does not report counts 0.
    """
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import DetectOutput, run_inference

    if not images:
        raise UserError("no images to time")
    decoded = dict(images)
    inputs = [ImageInput(i, Path(i)) for i, _ in images]
    result = run_inference(detector, inputs, progress=False, output=DetectOutput(write=False), images=decoded,
                           warmup=warmup, repeats=repeats)
    per_image = [{"image_id": e["image_id"], **{s: float(e.get(s, 0.0)) for s in _STAGES},
                  "proposals_count": e["num_proposals"]} for e in result["per_image"]]
    known = [e["proposals_count"] for e in per_image if e["proposals_count"] is not None]
    device = str(getattr(detector, "device", "cpu"))
    return {
        "median": {s: _median([e[s] for e in per_image]) for s in _STAGES},
        "mean": {s: float(sum(e[s] for e in per_image) / len(per_image)) for s in _STAGES},
        "per_image": per_image, "proposals_per_image": _median(known) if known else None,
        "images": len(per_image), "warmup": int(warmup), "repeats": int(repeats),
        "device": device, "device_name": _device_name(device), "threads": threads_info(),
    }


def make_detector(model_dir: str | Path, device: str = "auto", runtime: str = "torch", **options: Any):
    """The detector of a run; ``runtime``: its CNN's; ``options``: its method's own (R-CNN's ``batch_size``)."""
    from rcnn_cli.registry import load_detector

    return load_detector(model_dir, device=device, **options, **({"runtime": runtime} if runtime != "torch" else {}))


def time_in_child(model_dir: str, device: str, options: dict, items: list[tuple[str, str]], n: int,
                   warmup: int, repeats: int, threads: int, runtime: str = "torch") -> dict:
    """Run in the timing child process: load ``n`` readable images of ``items`` (``(image_id,
    path)``), build the detector (``options``: its method's own), return :func:`time_detector`'s
    result (JSON-able)."""
    import torch
    from types import SimpleNamespace

    torch.set_num_threads(int(threads))
    dataset = SimpleNamespace(records=[SimpleNamespace(image_id=i, path=Path(p)) for i, p in items])
    images = load_timing_images(dataset, n)
    with make_detector(model_dir, device, runtime, **options) as detector:
        return jsonable(time_detector(detector, images, warmup=warmup, repeats=repeats))


def load_timing_images(dataset, n: int) -> list[tuple[str, Any]]:
    """The first ``n`` readable images of a dataset split, decoded (``(image_id, PIL image)``)."""
    from rcnn_cli.data.images import load_image

    out = []
    for rec in dataset.records:
        if len(out) >= n:
            break
        try:
            out.append((rec.image_id, load_image(rec.path)))
        except ImageError as e:
            logger.warning("%s; not timed", e)
    if not out:
        raise UserError("no readable test image to time")
    return out


def speedups(times: Mapping[str, float | None], reference: str = "rcnn") -> dict[str, float | None]:
    """``reference``'s time divided by each method's (``None`` where either is missing or zero)."""
    ref = times.get(reference)
    return {m: (float(ref) / float(t) if ref and t else None) for m, t in times.items()}


