"""Datasets (Pascal VOC, COCO), image inputs and image loading.

Names are imported lazily, so that ``import rcnn_cli.data.images`` (in proposal worker
processes) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "rcnn_cli.data.dataset", "ImageRecord": "rcnn_cli.data.dataset",
    "load_image": "rcnn_cli.data.images", "to_tensor": "rcnn_cli.data.images",
    "ImageInput": "rcnn_cli.data.inputs", "is_dataset": "rcnn_cli.data.inputs",
    "load_dataset": "rcnn_cli.data.inputs", "resolve_inputs": "rcnn_cli.data.inputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rcnn_cli.data' has no attribute {name!r}")
