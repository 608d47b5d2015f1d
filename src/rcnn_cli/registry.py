"""The registry: every method, listed once (the only list of them), and what is asked of it by name.

``METHODS`` follows the lecture's order (``rcnn compare``'s columns). :func:`load_detector` builds the
detector of a run directory (by its recorded ``kind``), an exported ``.onnx`` or a pretrained name.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from rcnn_cli.detector import DetectSettings, Detector
from rcnn_cli.errors import UserError
from rcnn_cli.io.runs import read_run
from rcnn_cli.method import Method
from rcnn_cli.models import fast_rcnn, faster_rcnn, localizer, onnx_detector, overfeat, pretrained, yolo
from rcnn_cli.rcnn import finetune
from rcnn_cli.rcnn import method as rcnn_method

__all__ = ["METHODS", "method", "method_of", "compared", "load_detector", "takes_option", "PRETRAINED_NAMES"]

METHODS: dict[str, Method] = {m.name: m for m in (
    overfeat.METHOD, rcnn_method.HOG, rcnn_method.METHOD, fast_rcnn.METHOD, faster_rcnn.METHOD, yolo.METHOD,
    localizer.METHOD, finetune.METHOD, onnx_detector.METHOD, pretrained.METHOD)}

#: ``--model`` names of detectors trained by others.
PRETRAINED_NAMES = tuple(pretrained.PRETRAINED)


def method(kind: str) -> Method:
    """The method of a run ``kind`` (or a kind format-1 runs wrote); unknown is a one-line error."""
    if kind in METHODS:
        return METHODS[kind]
    for m in METHODS.values():
        if kind in m.legacy:
            return m
    raise UserError(f"unknown method '{kind}' (known: {', '.join(METHODS)})")


def compared() -> list[Method]:
    """The methods ``rcnn compare`` can run, in the lecture's order."""
    return [m for m in METHODS.values() if m.compare is not None]


def method_of(model: str | os.PathLike) -> Method:
    """The method of what ``model`` names: an exported ``.onnx``, a pretrained name or a run directory."""
    for m in METHODS.values():
        if m.named is not None and m.named(str(model)):
            return m
    return method(read_run(model).kind)


def _detector_class(m: Method) -> type[Detector]:
    if m.detector is None:
        detectors = ", ".join(k for k, v in METHODS.items() if v.detector is not None)
        raise UserError(f"a '{m.name}' run is not a detector (detectors: {detectors})")
    return m.detector


def takes_option(model: str | os.PathLike, option: str) -> bool:
    """Whether the detector of ``model`` takes ``option`` (e.g. ``runtime``)."""
    return option in inspect.signature(_detector_class(method_of(model)).from_run).parameters


def load_detector(model: str | os.PathLike, device: str = "auto", config: DetectSettings = None,
                  **options: Any) -> Detector:
    """The detector of a run directory (by its recorded ``kind``), an exported whole-detector
    ``.onnx`` or a pretrained name (``coco``).

    ``config``: the test-time settings, whole, or the values given over the run's own
    (:func:`rcnn_cli.detector.settings_in_effect`); ``options`` are the method's own (``proposals``
    for R-CNN and Fast R-CNN, ``rpn_top_n`` for Faster R-CNN, ...): one it does not take is a
    one-line error.
    """
    m = method_of(model)
    cls = _detector_class(m)
    direct = m.named is not None  # no run directory
    root = model if direct else read_run(model).root
    accepted = inspect.signature(cls.from_run).parameters
    foreign = [k for k in options if k not in accepted]
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise UserError(f"{flags}: not a setting of " + (f"--model {model}" if direct else f"a '{m.name}' run ({root})"))
    return cls.from_run(root, device=device, config=config, **options)
