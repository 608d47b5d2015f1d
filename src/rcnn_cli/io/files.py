"""Crash-safe file output: write to a temporary name, then rename; configuration records."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rcnn_cli import __version__


def creation_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under the process's umask (0644 / 0755 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An exception or a kill leaves ``path`` as it was (old content or absent), never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, creation_mode())  # mkstemp makes 0600; outputs honour the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """``open()`` for writing that only replaces ``path`` once the block finishes without error."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def json_default(obj: Any) -> Any:
    """``json.dump(default=...)``: numpy scalars and arrays, tensors, paths; anything else as ``str``."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and torch tensors
        return obj.tolist()
    return str(obj)


def jsonable(obj: Any) -> Any:
    """``obj`` turned into plain JSON types (what :func:`write_json` would write)."""
    return json.loads(json.dumps(obj, default=json_default))


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's entry to disk (folders: after a rename inside them); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON atomically (numpy scalars and arrays allowed)."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=indent, default=json_default)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is a one-line :class:`UserError`."""
    from rcnn_cli.errors import UserError

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_record(command: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """The configuration record written beside every output: command, settings, versions, time
    (``config`` None: without the ``config`` entry, for records that hold their settings themselves)."""
    import torch

    return {
        "command": command,
        **({} if config is None else {"config": config}),
        "rcnn_version": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_record(output: str | os.PathLike, command: str, config: dict[str, Any]) -> Path:
    """Write ``<output>.config.json`` (or ``<dir>/config.json`` for a directory) and return its path."""
    output = Path(output)
    target = output / "config.json" if output.is_dir() else output.with_name(output.name + ".config.json")
    write_json(target, run_record(command, config))
    return target
