"""The format-1 run reader (runs written by rcnn <= 0.1.0, up to commit e8b1e22), kept in one place.

Format 1 had two records: an R-CNN model ``config.json`` with ``format: "rcnn-model"`` (the model
settings at the top level), and engine runs ``{"command", "config": {"model": {...}, "train":
{...}}}`` whose model has ``arch: "fast_rcnn"`` or ``kind: "faster_rcnn"``. A fixture under
``tests/fixtures/runs_e8b1e22`` holds one run of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Run", "read_legacy"]

#: The kinds format-1 records wrote: the method's name with a suffix (``faster_rcnn`` is ``faster``).
_KINDS = ("rcnn-model", "fast_rcnn", "faster_rcnn")


def _method(kind: str) -> str:
    return kind.replace("-", "_").split("_")[0]


@dataclass
class Run:
    """A run directory as read: ``kind``, the model and training configurations, the whole record."""

    root: Path
    kind: str
    format_version: int
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def read_legacy(record: dict[str, Any], where: Path) -> Run | None:
    """The run of a format-1 record (no ``kind`` at the top level) read from ``where``, or None."""
    if record.get("format") == "rcnn-model":
        model = {k: v for k, v in record.items() if k not in ("format", "rcnn_version")}
        return Run(where.parent, _method("rcnn-model"), 1, model, record=record)
    inner = record.get("config") if isinstance(record.get("config"), dict) else record
    model = inner.get("model") if isinstance(inner, dict) else None
    if isinstance(model, dict):
        kind = str(model.get("kind") or model.get("arch") or "")
        if kind in _KINDS:
            kind = _method(kind)
            train = inner.get("train") if isinstance(inner.get("train"), dict) else {}
            return Run(where.parent, kind, 1, model, train, record)
    return None
