"""Run directories: the one ``config.json`` format shared by every trained thing.

Every run directory (an R-CNN model directory, a Fast or Faster R-CNN run, and the methods to come)
holds ``config.json``::

    {"kind": "<the method's name>", "format_version": 2,
     "model": {...},            # everything needed to rebuild the model
     "train": {...},            # the training configuration (stage settings for R-CNN)
     "command": "...", "rcnn_version": "...", "python": ..., "torch": ..., "created": ...}

Runs written before format 2 (rcnn <= 0.1.0 at commit e8b1e22) are read by :mod:`rcnn_cli.io.legacy`.
Which kinds exist is the registry's business (:mod:`rcnn_cli.registry`), not this reader's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rcnn_cli.errors import UserError
from rcnn_cli.io.files import read_json, run_record, write_json
from rcnn_cli.io.legacy import Run, read_legacy

__all__ = ["FORMAT_VERSION", "Run", "read_run", "write_run", "run_config_path", "weights_file",
           "model_config", "load_weights"]

FORMAT_VERSION = 2


def run_config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "config.json"


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read ``run_dir/config.json`` (format 2, or the format-1 records above).

    A missing directory or file, a record of no known kind or a newer format is a one-line
    :class:`UserError` naming what was found.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: model directory not found")
    where = run_config_path(root)
    if not where.is_file():
        raise UserError(f"{where}: not found (not a run directory)")
    record = read_json(where)
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a run record (a JSON object is expected)")
    if "kind" not in record or "format_version" not in record:
        run = read_legacy(record, where)
        if run is None:
            raise UserError(f"{where}: not a run of rcnn (no 'kind'; found keys {', '.join(sorted(record)[:6])})")
        return run
    version = record["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{where}: run format version {version!r} is newer than this rcnn reads ({FORMAT_VERSION})")
    if not isinstance(record["kind"], str) or not record["kind"]:
        raise UserError(f"{where}: 'kind' must name a method (found {record['kind']!r})")
    model = record.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{where}: no 'model' configuration")
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    return Run(root, str(record["kind"]), version, model, train, record)


def write_run(run_dir: str | os.PathLike, kind: str, model: dict[str, Any], train: dict[str, Any] | None = None,
              command: str = "", **extra: Any) -> Path:
    """Write ``run_dir/config.json`` in the current format (atomically); returns its path."""
    record = {"kind": kind, "format_version": FORMAT_VERSION, "model": model, "train": train or {}, **extra}
    record.update(run_record(command, None))
    path = run_config_path(run_dir)
    write_json(path, record)
    return path


def weights_file(run_dir: str | os.PathLike, weights: str = "final") -> Path:
    """A trained run's weights: ``final`` (``model.safetensors``) or ``best`` (the best validation
    epoch's, ``best/model.safetensors``, kept when the run was trained with a validation split)."""
    root = Path(run_dir)
    if weights == "final":
        return root / "model.safetensors"
    if weights == "best":
        path = root / "best" / "model.safetensors"
        if not path.is_file():
            raise UserError(f"{root}: no best/ weights (the run was trained without --val-split)")
        return path
    raise UserError(f"--weights {weights}: choose final or best")


def model_config(run_dir: str | os.PathLike, kind: str, config_cls: type) -> Any:
    """The model configuration (``config_cls.from_dict``) of a run of ``kind``; another kind is a
    one-line :class:`UserError`."""
    run = read_run(run_dir)
    if run.kind != kind:
        raise UserError(f"{run_dir}/config.json: a '{run.kind}' run, not a '{kind}' one (use `rcnn detect`)")
    return config_cls.from_dict(run.model)


def load_weights(model: Any, run_dir: str | os.PathLike, weights: str = "final") -> Any:
    """Load a run's ``final`` or ``best`` safetensors weights into ``model``; a missing file is one line."""
    from rcnn_cli.io.tensors import load_state

    path = weights_file(run_dir, weights)
    if not path.is_file():
        raise UserError(f"{path}: not found (is the training finished? the training command with --resume goes on)")
    load_state(model, path)
    return model
