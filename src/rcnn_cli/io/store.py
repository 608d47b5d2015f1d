"""The crash-safe per-image HDF5 store: what `rcnn propose` and `rcnn extract-features` write to.

A store ``OUT`` is one HDF5 file: file attributes (the settings that made it) and one group of
per-image objects (a dataset or a group per image, named by :func:`~rcnn_cli.io.hdf5.escape_id`
of the image id), each with the attributes ``image_id``, ``order`` (the image's place in the
run's input list; the finished file is sorted by it) and ``complete``.

Why a SIGKILL at any moment cannot corrupt anything
---------------------------------------------------
HDF5 updates its metadata in place, so a file killed while open for writing may not open again.
The store therefore never writes to a file under its final name:

1. Finished images go into a *part* file ``OUT.parts/.part-<n>.tmp``. Every ``checkpoint_seconds``
   (``0``: after every image) and at the end, the part is closed, fsynced and atomically renamed to
   ``OUT.parts/part-<n>.h5`` (then the folder is fsynced); a renamed part is never written again.
   A kill loses at most the images of the open part (a ``.tmp`` file, deleted by the next run).
2. :meth:`ImageStore.finish` builds the whole store in a temporary file beside ``OUT`` (the previous
   ``OUT`` if any, plus every part, sorted by ``order``), fsyncs it and ``os.replace``s it onto
   ``OUT``; only then is ``OUT.parts`` removed. A kill before the rename leaves the old state (the
   rerun rebuilds); a kill after it leaves parts whose images are already in ``OUT``.
3. A rerun deletes stale ``.tmp`` parts, reads ``OUT`` and the renamed parts, and reports their
   images in :attr:`ImageStore.done`, so the caller skips them.

Part files rather than a write-ahead journal: a part is an ordinary HDF5 file of the same layout,
so any per-image object (boxes, or features with their targets) is stored without a second
encoding, nothing is ever copied while the run goes on, and :func:`published` lets a reader see
the finished images of a run still going (or killed) without writing anything.

An exclusive ``flock`` on ``OUT.lock`` refuses a second concurrent writer; the caller's ``check``
refuses an ``OUT`` or parts made with other settings (one line, nothing touched).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import h5py

from rcnn_cli.errors import UserError
from rcnn_cli.io.files import fsync_path
from rcnn_cli.io.hdf5 import attr_value, escape_id, h5_attr

__all__ = ["ImageStore", "parts_dir", "published", "read_attrs"]

#: ``write(group, name)`` creates one image's object (dataset or group) called ``name`` in ``group``
#: and returns it; the store then sets ``image_id``, ``order`` and ``complete`` on it.
Writer = Callable[[h5py.Group, str], Any]


def parts_dir(out: Path) -> Path:
    """The folder of the published and open parts of the store ``out``."""
    return out.with_name(out.name + ".parts")


def published(out: Path) -> list[Path]:
    """The files that hold finished images of ``out``: ``out`` itself when it exists, then every
    renamed part in the order they were written (never the open ``.tmp`` part)."""
    files = [out] if out.is_file() else []
    parts = parts_dir(out)
    return files + (sorted(parts.glob("part-*.h5")) if parts.is_dir() else [])


def read_attrs(path: Path) -> dict[str, Any]:
    """The file attributes of ``path`` as plain values; one-line :class:`UserError` if it does not open."""
    try:
        with h5py.File(path, "r") as f:
            return {k: attr_value(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise UserError(f"{path}: exists but is not a readable HDF5 file ({e}); use a new --out or --overwrite") from None


def _publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it onto ``final`` (atomic), fsync the folder."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


class ImageStore:
    """Writer of one store (use as a context manager; see the module docstring).

    ``file_attrs``: the file attributes (``format`` among them); ``group``: the name of the
    per-image group; ``check(path, attrs)``: raises :class:`UserError` when an existing file's
    attributes belong to other settings; ``what``: the command named in the lock's refusal.
    After entering, :attr:`done` maps each finished image id to ``(file, object name)``.
    """

    def __init__(self, out: str | os.PathLike, file_attrs: dict[str, Any], *, group: str,
                 check: Callable[[Path, dict[str, Any]], None], what: str, checkpoint_seconds: float = 20.0,
                 overwrite: bool = False):
        self.out, self.file_attrs, self.group = Path(out), dict(file_attrs), group
        self.check, self.what, self.overwrite = check, what, overwrite
        self.checkpoint_seconds = float(checkpoint_seconds)
        self.parts = parts_dir(self.out)
        self.done: dict[str, tuple[Path, str]] = {}
        self._lock_fd: int | None = None
        self._part: h5py.File | None = None
        self._tmp: Path | None = None
        self._next = 0
        self._last_commit = time.monotonic()

    # -------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "ImageStore":
        self._lock()
        try:
            if self.overwrite:
                shutil.rmtree(self.parts, ignore_errors=True)
                self.out.unlink(missing_ok=True)
            self._scan()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.abandon()
        finally:
            self._unlock()

    def _lock(self) -> None:
        lock_path = self.out.with_name(self.out.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.out}: another {self.what} process is writing it") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            self.out.with_name(self.out.name + ".lock").unlink(missing_ok=True)

    def _scan(self) -> None:
        """Delete stale open parts; fill :attr:`done` from ``OUT`` and the renamed parts."""
        if self.parts.is_dir():
            for stale in self.parts.glob(".part-*.tmp"):
                stale.unlink()
        files = published(self.out)
        parts = [p for p in files if p != self.out]
        self._next = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        for path in files:
            attrs = read_attrs(path)
            if attrs.get("format") != self.file_attrs.get("format"):
                raise UserError(f"{path}: exists and is not a {self.file_attrs.get('format')} file; "
                                "use a new --out or --overwrite")
            self.check(path, attrs)
            with h5py.File(path, "r") as f:
                for name, obj in f[self.group].items():
                    if bool(obj.attrs.get("complete", True)):
                        self.done.setdefault(str(attr_value(obj.attrs["image_id"])), (path, name))

    # -------------------------------------------------------------------------------- writing

    def add(self, image_id: str, order: int, write: Writer) -> None:
        """Write one finished image into the open part (``write`` makes its object); publish the
        part when ``checkpoint_seconds`` have passed since the last one."""
        if self._part is None:
            self.parts.mkdir(parents=True, exist_ok=True)
            self._tmp = self.parts / f".part-{self._next:06d}.tmp"
            self._part = h5py.File(self._tmp, "w")
            self._part.attrs.update({k: h5_attr(v) for k, v in self.file_attrs.items()})
            self._part.create_group(self.group, track_order=True)
        name = escape_id(image_id)
        obj = write(self._part[self.group], name)
        obj.attrs.update({"image_id": image_id, "order": int(order)})
        obj.attrs["complete"] = True
        self.done[image_id] = (self.parts / f"part-{self._next:06d}.h5", name)
        if time.monotonic() - self._last_commit >= self.checkpoint_seconds:
            self.commit()

    def commit(self) -> None:
        """Close, fsync and rename the open part (no-op without one)."""
        if self._part is None:
            return
        self._part.close()
        self._part = None
        _publish(self._tmp, self.parts / f"part-{self._next:06d}.h5")
        self._next += 1
        self._last_commit = time.monotonic()

    def abandon(self) -> None:
        """Drop the open part (its images are redone by a rerun); published parts stay."""
        if self._part is not None:
            self._part.close()
            self._part = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for image_id in [i for i, (path, _) in self.done.items() if not path.exists()]:
            del self.done[image_id]

    def finish(self) -> None:
        """Publish the open part, then build ``OUT`` from the previous ``OUT`` and every part, sorted
        by ``order`` (atomically), and remove the parts. Nothing to do when ``OUT`` exists and no
        part does (an empty ``OUT`` is made when neither exists)."""
        self.commit()
        if not self.parts.is_dir() and self.out.is_file():
            return
        opened = {path: h5py.File(path, "r") for path in published(self.out)}
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        try:
            entries = sorted(((int(opened[path][self.group][name].attrs.get("order", 0)), rank, path, name)
                              for rank, (path, name) in enumerate(self.done.values())), key=lambda e: e[:2])
            with h5py.File(tmp, "w") as dst:
                dst.attrs.update({k: h5_attr(v) for k, v in self.file_attrs.items()})
                group = dst.create_group(self.group, track_order=True)
                for _, _, path, name in entries:
                    opened[path].copy(opened[path][self.group][name], group, name=name)
            _publish(tmp, self.out)
        finally:
            for f in opened.values():
                f.close()
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.done = {i: (self.out, name) for i, (_, name) in self.done.items()}
