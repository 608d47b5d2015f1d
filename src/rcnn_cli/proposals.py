"""Region proposals: selective search, sliding windows, the proposals HDF5 store, recall.

Proposal methods
----------------
* ``selective-search`` (OpenCV contrib ``cv2.ximgproc.segmentation``, ``fast`` or ``quality``
  strategy). The image is resized (``cv2.INTER_AREA``) so that its longer side is at most
  ``max_size`` (never enlarged), boxes are mapped back to original pixels per axis, clipped to
  the image, exact duplicates dropped (first occurrence kept, so OpenCV's ranking order is kept),
  and boxes narrower **or** shorter than ``min(min_size, image width/height)`` **original** pixels
  are dropped (an image smaller than ``min_size`` keeps its whole-image box). ``limit`` keeps the
  top-K. OpenCV ranks regions with ``rand()``; ``srand(seed)`` is called before every image, so a
  run is reproducible and independent of worker count and order.
* Fallback: when OpenCV raises (``cv2.error``), when the resized image's shorter side is below
  :data:`SS_MIN_SIDE` pixels (1x1 images, 50:1 strips at ``max_size`` 500), or when nothing
  survives the filters, that image gets sliding windows instead; the per-image attribute
  ``method`` records what was used, ``fallback`` is true and ``note`` says why; a warning is logged.
* ``sliding-window``: dense multi-scale, multi-aspect windows (see :func:`sliding_windows`).
* any callable ``proposer(image) -> (N, 4)`` (e.g. the RPN of Faster R-CNN), in process.

Boxes are ``x1, y1, x2, y2`` float32 in original image pixels (continuous: OpenCV's rect
``x, y, w, h`` becomes ``x, y, x + w, y + h`` before scaling).

Store layout (HDF5, one file)
-----------------------------
File attributes: ``format="rcnn-proposals"``, ``format_version``, ``version`` (package),
``method``, ``mode``, ``max_size``, ``min_size``, ``limit`` (``0`` = none; the reader gives
``None``), ``seed``, ``filter_min_size``/``filter_limit`` (the box filter actually applied),
``config`` (JSON of the run record), plus any ``attrs`` given by the caller.
Group ``/proposals`` (insertion order tracked) holds one float32 ``(N, 4)`` dataset per image,
named by the image id with ``%`` -> ``%25`` and ``/`` -> ``%2F`` (and ``.`` -> ``%2E``);
dataset attributes: ``image_id``, ``order`` (place in the run's inputs), ``width``, ``height``,
``seconds`` (resize + search + filter), ``load_seconds`` (decoding), ``method`` (actually used),
``fallback``, ``note``, ``complete``.

Crash safety and resuming
-------------------------
The store is :class:`rcnn_cli.io.store.ImageStore`: finished images go into part files renamed
into place every ``checkpoint_seconds`` (default 5 s, so a kill loses at most a few seconds of
search), and ``OUT`` is built once, atomically, when the run ends. Rerunning the same command skips
every image already published. :func:`load` reads ``OUT`` and the published parts of a run that is
still going or was killed (read only), so every published image is visible before a rerun. An
exclusive lock refuses a second concurrent writer; rerunning into a file of different settings is
refused (use a new ``--out`` or ``--overwrite``).
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from rcnn_cli import __version__
from rcnn_cli.boxes import resize_boxes
from rcnn_cli.io.files import fsync_path
from rcnn_cli.io.hdf5 import StoreReader, attr_value, escape_id, h5_attr, unescape_id
from rcnn_cli.io.store import ImageStore, published
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.log import logger

__all__ = [
    "ProposalConfig",
    "METHODS",
    "MODES",
    "ProposalReader",
    "ProposalResult",
    "load",
    "run_propose",
    "merge_proposals",
    "selective_search",
    "sliding_windows",
    "propose_image",
    "filter_boxes",
    "escape_id",
    "unescape_id",
]

FORMAT = "rcnn-proposals"
FORMAT_VERSION = 1
GROUP = "proposals"
METHODS = ("selective-search", "sliding-window")
MODES = ("fast", "quality")
#: Below this shorter side (pixels, after resizing) selective search is not run: sliding windows.
SS_MIN_SIDE = 16
#: Settings that must match to resume into an existing file.
_IDENTITY_KEYS = ("method", "mode", "max_size", "min_size", "limit", "seed", "filter_min_size", "filter_limit")
_META_KEYS = ("format", "format_version", "version", "uuid", "config", "created")


# ----------------------------------------------------------------------------------------------
# ids
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# proposal methods
# ----------------------------------------------------------------------------------------------

@dataclass
class ProposalResult:
    """Proposals of one image: ``boxes (N, 4)`` float32 original pixels, in ranking order."""

    boxes: np.ndarray
    method: str
    fallback: bool = False
    note: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ProposalConfig:
    """What a proposals file is made with (recorded in it; resuming into it with other settings is refused).

    ``method``: ``selective-search`` or ``sliding-window`` (with a ``proposer`` callable: any name,
    e.g. ``rpn``); ``mode``: selective search's ``fast`` or ``quality``; ``max_size``: the longer
    image side searched (pixels; ``None``: the image as it is); ``min_size``: the smallest box side
    kept (original pixels); ``limit``: the top-K kept per image (``None`` or 0: all); ``seed``:
    OpenCV's ``srand`` before each image.
    """

    method: str = "selective-search"
    mode: str = "fast"
    max_size: int | None = 500
    min_size: float = 20
    limit: int | None = None
    seed: int = 0

    def check(self) -> None:
        """One line for a setting selective search or sliding windows cannot run with."""
        _check_settings(self.method, self.mode, self.max_size, self.min_size)


def _limit(limit: int | None) -> int | None:
    return None if limit is None or int(limit) <= 0 else int(limit)


def filter_boxes(boxes: np.ndarray, width: int, height: int, min_size: float = 20, limit: int | None = None) -> np.ndarray:
    """Clip ``boxes (N, 4)`` to the image, drop boxes narrower or shorter than
    ``min(min_size, width, height)`` pixels, drop exact duplicates (keeping the first, so the order
    is kept) and keep the first ``limit`` (``None``/``0``: all). Returns float32 ``(M, 4)``."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if len(b):
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
        side = min(float(min_size), float(width), float(height))
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        b = b[(w >= side) & (h >= side) & (w > 0) & (h > 0)]
    if len(b):
        _, first = np.unique(b, axis=0, return_index=True)
        b = b[np.sort(first)]
    k = _limit(limit)
    if k is not None:
        b = b[:k]
    return np.ascontiguousarray(b, dtype=np.float32)


def sliding_windows(width: int, height: int, min_size: float = 20, limit: int | None = None,
                    aspects: Sequence[float] = (1.0, 2.0, 0.5), scale_step: float = math.sqrt(2.0),
                    overlap: float = 0.5) -> np.ndarray:
    """Dense multi-scale, multi-aspect windows ``(N, 4)`` float32 in pixels, coarse to fine.

    The whole image comes first; then for window sides ``s = short * scale_step**-k`` (``short`` =
    the image's shorter side, down to ``max(min_size, short / 16)``) and each aspect ratio ``a =
    w / h`` (``w = s * sqrt(a)``, ``h = s / sqrt(a)``, capped by the image), windows on a grid with
    ``overlap`` (stride = ``(1 - overlap)`` x window side) that touches both borders, row-major.
    Filtered by :func:`filter_boxes`.
    """
    W, H = float(width), float(height)
    short = min(W, H)
    out = [np.array([[0.0, 0.0, W, H]], np.float32)]
    smallest = max(float(min_size), short / 16.0)
    s = short
    while True:
        for a in aspects:
            bw, bh = min(W, s * math.sqrt(a)), min(H, s / math.sqrt(a))
            nx = max(1, math.ceil((W - bw) / max(1e-6, (1 - overlap) * bw)) + 1)
            ny = max(1, math.ceil((H - bh) / max(1e-6, (1 - overlap) * bh)) + 1)
            xs = np.linspace(0.0, W - bw, nx, dtype=np.float64)
            ys = np.linspace(0.0, H - bh, ny, dtype=np.float64)
            gy, gx = np.meshgrid(ys, xs, indexing="ij")
            gx, gy = gx.ravel(), gy.ravel()
            out.append(np.stack([gx, gy, gx + bw, gy + bh], axis=1).astype(np.float32))
        s /= scale_step
        if s < smallest - 1e-6:
            break
    return filter_boxes(np.concatenate(out), width, height, min_size, limit)


_libc = None


def _srand(seed: int) -> None:
    """Seed the C library's ``rand()``, which OpenCV's selective search uses to rank regions."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.srand(ctypes.c_uint(int(seed) & 0xFFFFFFFF))
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        pass


def _resized_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    if not max_size or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def opencv_selective_search(bgr: np.ndarray, mode: str = "fast", seed: int = 0) -> np.ndarray:
    """Bare OpenCV selective search on a BGR ``uint8 (H, W, 3)`` array: rects ``(N, 4)`` ``x, y, w, h``."""
    import cv2

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if mode == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        ss.switchToSelectiveSearchFast()
    _srand(seed)
    rects = ss.process()
    return np.asarray(rects, np.int64).reshape(-1, 4)


def _check_settings(method: str, mode: str, max_size: int | None, min_size: float) -> None:
    if method not in METHODS:
        raise UserError(f"unknown proposal method '{method}' (choose from {', '.join(METHODS)})")
    if mode not in MODES:
        raise UserError(f"unknown selective-search mode '{mode}' (choose from {', '.join(MODES)})")
    if max_size is not None and max_size < 1:
        raise UserError(f"--max-size must be positive, got {max_size}")
    if min_size < 0:
        raise UserError(f"--min-box must be >= 0, got {min_size}")


def propose_image(image, method: str = "selective-search", mode: str = "fast", max_size: int | None = 500,
                  min_size: float = 20, limit: int | None = None, seed: int = 0) -> ProposalResult:
    """Proposals for one RGB ``PIL.Image`` (or ``(H, W, 3)`` RGB uint8 array), with the fallback policy."""
    t0 = time.perf_counter()
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    height, width = rgb.shape[:2]
    if method == "sliding-window":
        boxes = sliding_windows(width, height, min_size, limit)
        return ProposalResult(boxes, "sliding-window", seconds=time.perf_counter() - t0)
    import cv2

    nw, nh = _resized_size(width, height, max_size)
    note = ""
    if min(nw, nh) < SS_MIN_SIDE:
        note = f"image too small for selective search ({width}x{height}, {nw}x{nh} after resizing)"
    else:
        try:
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
            if (nw, nh) != (width, height):
                bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
            rects = opencv_selective_search(bgr, mode, seed).astype(np.float32)
            boxes = rects.copy()
            boxes[:, 2] += boxes[:, 0]
            boxes[:, 3] += boxes[:, 1]
            boxes = resize_boxes(boxes, (nw, nh), (width, height))
            boxes = filter_boxes(boxes, width, height, min_size, limit)
            if len(boxes):
                return ProposalResult(boxes, "selective-search", seconds=time.perf_counter() - t0)
            note = f"selective search gave no box of at least {min_size} px"
        except cv2.error as e:
            msg = str(e).strip().splitlines()
            note = f"OpenCV failed: {msg[-1] if msg else type(e).__name__}"
    boxes = sliding_windows(width, height, min_size, limit)
    return ProposalResult(boxes, "sliding-window", fallback=True, note=note, seconds=time.perf_counter() - t0)


def selective_search(image, mode: str = "fast", max_size: int | None = 500, min_size: float = 20,
                     limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Selective-search proposals ``(N, 4)`` float32 in original pixels, ranking order (see the
    module docstring for resizing, filtering and the sliding-window fallback)."""
    result = propose_image(image, "selective-search", mode, max_size, min_size, limit, seed)
    if result.fallback:
        logger.warning("selective search fell back to sliding windows: %s", result.note)
    return result.boxes


# ----------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------

def _worker_init(threads: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        import cv2

        cv2.setNumThreads(max(1, int(threads)))
    except Exception:  # noqa: BLE001
        pass


def _work(task: tuple[str, str, dict]) -> dict:
    """Worker: load one image and propose. Never raises for a bad image (returns ``error``)."""
    from rcnn_cli.data.images import load_image

    image_id, path, settings = task
    try:
        t0 = time.perf_counter()
        image = load_image(path)
        load_seconds = time.perf_counter() - t0
        result = propose_image(image, **settings)
    except ImageError as e:
        return {"image_id": image_id, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one bad image must not stop the run
        return {"image_id": image_id, "error": f"{path}: {type(e).__name__}: {e}"}
    return {"image_id": image_id, "boxes": result.boxes, "width": image.size[0], "height": image.size[1],
            "seconds": result.seconds, "load_seconds": load_seconds, "method": result.method,
            "fallback": result.fallback, "note": result.note}


def _work_proposer(proposer: Callable, image_id: str, path, limit: int | None, min_size: float, method: str) -> dict:
    from rcnn_cli.data.images import load_image

    try:
        t0 = time.perf_counter()
        image = load_image(path)
        t1 = time.perf_counter()
        boxes = np.asarray(proposer(image), np.float32).reshape(-1, 4)
        boxes = filter_boxes(boxes, image.size[0], image.size[1], min_size, limit)
        t2 = time.perf_counter()
    except ImageError as e:
        return {"image_id": image_id, "error": str(e)}
    return {"image_id": image_id, "boxes": boxes, "width": image.size[0], "height": image.size[1],
            "seconds": t2 - t1, "load_seconds": t1 - t0, "method": method, "fallback": False, "note": ""}


# ----------------------------------------------------------------------------------------------
# the store
# ----------------------------------------------------------------------------------------------

def _write_image(group: h5py.Group, name: str, rec: dict) -> h5py.Dataset:
    """One image's ``(N, 4)`` float32 boxes as the dataset ``name``, its facts as attributes."""
    ds = group.create_dataset(name, data=np.asarray(rec["boxes"], np.float32).reshape(-1, 4))
    for key in ("width", "height", "seconds", "load_seconds", "method", "fallback", "note"):
        ds.attrs[key] = h5_attr(rec.get(key, ""))
    return ds


def _checker(file_attrs: dict):
    """The store's ``check``: refuse a file whose identity settings differ from ``file_attrs``."""
    requested = {k: attr_value(h5_attr(v)) for k, v in file_attrs.items() if k not in _META_KEYS}

    def check(path: Path, existing: dict) -> None:
        diffs = [f"{k}={existing.get(k)!r} (now {v!r})" for k, v in requested.items()
                 if attr_value(existing.get(k)) != v]
        if diffs:
            raise UserError(f"{path} was made with different settings: {', '.join(diffs)}; "
                            "use a new --out or --overwrite")
    return check


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------

def _unique_inputs(inputs: list, shard: tuple[int, int] | None) -> list:
    """The inputs without repeated image ids (the first kept), every N-th from the K-th for a shard."""
    seen: set[str] = set()
    unique = []
    for inp in inputs:
        if inp.image_id in seen:
            logger.warning("%s: duplicate image id (%s), kept the first", inp.image_id, inp.path)
            continue
        seen.add(inp.image_id)
        unique.append(inp)
    return unique[shard[0]::shard[1]] if shard is not None else unique


def _file_attrs(settings: dict, attrs: dict | None, shard: tuple[int, int] | None, out: Path, images: int,
                command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The proposals file's attributes (settings, extra ``attrs``, shard, the run record) and the record."""
    from rcnn_cli.io import run_record

    file_attrs: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, **settings}
    if attrs:
        file_attrs.update({k: v for k, v in attrs.items() if k not in _META_KEYS})
    if shard is not None:
        file_attrs["shard"] = f"{shard[0]}/{shard[1]}"
    config = dict({k: attr_value(h5_attr(v)) for k, v in file_attrs.items() if k not in ("format", "format_version")},
                  out=str(out), images=images)
    file_attrs["config"] = json.dumps(run_record(command, config))
    return file_attrs, config


def _store_results(results: Iterable[dict], store: ImageStore, order: dict[str, int], total: int, resumed: int,
                   progress: bool) -> tuple[int, int, list[int], list[float]]:
    """Add each image's proposals to ``store`` at its ``order`` (errors logged and skipped) under a
    progress bar; returns ``(skipped, fallbacks, boxes per stored image, seconds per stored image)``."""
    from rcnn_cli.log import progress_bar

    skipped, fallbacks, nboxes, secs = 0, 0, [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("proposals", total=total, completed=resumed, status=f"{resumed} resumed" if resumed else "")
        for res in results:
            if "error" in res:
                skipped += 1
                logger.warning("skipping %s: %s", res["image_id"], res["error"])
            else:
                store.add(res["image_id"], order[res["image_id"]], partial(_write_image, rec=res))
                nboxes.append(len(res["boxes"]))
                secs.append(res["seconds"])
                if res.get("fallback"):
                    fallbacks += 1
                    logger.warning("%s: fell back to sliding windows: %s", res["image_id"], res["note"])
                bar.update(task, status=f"{len(res['boxes'])} boxes, {res['seconds']:.2f} s")
            bar.advance(task)
    return skipped, fallbacks, nboxes, secs


@contextmanager
def _results(todo: list, search: dict, proposer: Callable | None, method_name: str, workers: int, cpu: int
             ) -> Iterator[Iterable[dict]]:
    """Each image's result, in input order: from ``proposer`` in process, or from ``search``
    (:func:`propose_image` settings) in ``workers`` processes (the pool ends with the block)."""
    if proposer is not None:
        yield (_work_proposer(proposer, i.image_id, i.path, search["limit"], search["min_size"], method_name)
               for i in todo)
        return
    tasks = [(i.image_id, str(i.path), search) for i in todo]
    if workers == 1:
        yield (_work(t) for t in tasks)
        return
    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(max(1, cpu // workers),))
    try:
        yield pool.imap(_work, tasks, chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def run_propose(inputs: list, out: str | os.PathLike, config: ProposalConfig | None = None, *,
                workers: int | None = None, progress: bool = True, proposer: Callable | None = None,
                attrs: dict | None = None, overwrite: bool = False, checkpoint_seconds: float = 5.0,
                command: str = "rcnn propose", shard: tuple[int, int] | None = None) -> dict:
    """Compute proposals for ``inputs`` (:class:`rcnn_cli.data.inputs.ImageInput`) into the HDF5 store
    ``out`` with the settings ``config`` (:class:`ProposalConfig`; ``None``: its defaults).

    Resumes: images already in ``out`` (or its published parts) are skipped. A missing or unreadable image
    is logged and skipped; :class:`UserError` if no image at all could be processed. With
    ``proposer`` (``PIL.Image -> (N, 4)`` original pixels), that callable runs in process instead of
    ``config.method`` (its boxes are clipped, filtered by ``min_size`` and deduplicated, ``limit``
    applied); ``attrs`` are added to the file attributes (e.g. ``{"method": "rpn", "model": ...}``).
    ``workers``: selective-search processes (default: one per core). ``shard=(K, N)``: only every
    N-th input from the K-th (join the shards with :func:`merge_proposals`). Returns ``{"images",
    "processed", "resumed", "skipped", "fallbacks", "boxes_per_image", "seconds_per_image" (median),
    "workers", "out"}``.
    """
    config = config or ProposalConfig()
    method, mode, max_size, min_size, seed = config.method, config.mode, config.max_size, config.min_size, config.seed
    limit = config.limit
    from rcnn_cli.io import write_run_record

    out = Path(out)
    limit = _limit(limit)
    if proposer is None:
        config.check()
    cpu = os.cpu_count() or 1
    workers = cpu if workers is None or workers <= 0 else int(workers)
    unique = _unique_inputs(inputs, shard)
    settings = {"method": method, "mode": mode, "max_size": int(max_size or 0), "min_size": float(min_size),
                "limit": int(limit or 0), "seed": int(seed), "filter_min_size": float(min_size),
                "filter_limit": int(limit or 0)}
    file_attrs, record = _file_attrs(settings, attrs, shard, out, len(unique), command)
    method_name = str(file_attrs.get("method", method))
    search = {"method": method, "mode": mode, "max_size": max_size, "min_size": min_size, "limit": limit, "seed": seed}

    with ImageStore(out, file_attrs, group=GROUP, check=_checker(file_attrs), what="propose",
                    checkpoint_seconds=checkpoint_seconds, overwrite=overwrite) as store:
        resumed = sum(1 for inp in unique if inp.image_id in store.done)
        todo = [inp for inp in unique if inp.image_id not in store.done]
        workers = max(1, min(workers, len(todo))) if proposer is None else 1
        with _results(todo, search, proposer, method_name, workers, cpu) as results:
            order = {inp.image_id: i for i, inp in enumerate(unique)}
            skipped, fallbacks, nboxes, secs = _store_results(results, store, order, len(unique), resumed, progress)
        processed = len(nboxes)
        if processed + resumed == 0 and len(unique) > 0:
            raise UserError(f"no image could be processed ({skipped} skipped, see the log)")
        store.finish()
    write_run_record(out, command, record)
    return {"images": len(unique), "processed": processed, "resumed": resumed, "skipped": skipped,
            "fallbacks": fallbacks, "boxes_per_image": float(np.mean(nboxes)) if nboxes else 0.0,
            "seconds_per_image": float(np.median(secs)) if secs else 0.0, "workers": workers, "out": str(out)}


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------

class ProposalReader(StoreReader):
    """Lazy reader of a proposals file, and of the published parts of a run still going or killed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        files = published(self.path)
        if not files:
            raise UserError(f"{self.path}: proposals file not found")
        self._files: list[h5py.File] = []
        try:
            for file in files:
                self._files.append(_open_proposals(file))
        except UserError:
            self.close()
            raise
        raw = {k: attr_value(v) for k, v in self._files[0].attrs.items()}
        if raw.get("limit") in (0, ""):
            raw["limit"] = None
        self.attrs: dict = raw
        self._ids: list[str] | None = None

    def _dataset(self, image_id: str):
        name = escape_id(image_id)
        for f in self._files:
            ds = f[GROUP].get(name)
            if ds is not None and bool(ds.attrs.get("complete", False)):
                return ds
        return None

    def ids(self) -> list[str]:
        """Ids of complete images, in file order (those of unjoined parts last)."""
        if self._ids is None:
            ids = [str(attr_value(ds.attrs["image_id"])) for f in self._files for ds in f[GROUP].values()
                   if bool(ds.attrs.get("complete", False))]
            self._ids = list(dict.fromkeys(ids))
        return list(self._ids)

    def __contains__(self, image_id: str) -> bool:
        return self._dataset(image_id) is not None

    def __len__(self) -> int:
        return len(self.ids())

    def _get(self, image_id: str):
        ds = self._dataset(image_id)
        if ds is None:
            raise KeyError(f"{image_id}: not in {self.path}")
        return ds

    def boxes(self, image_id: str) -> np.ndarray:
        """``(N, 4)`` float32 boxes in original image pixels, ranking order."""
        return np.asarray(self._get(image_id)[()], np.float32).reshape(-1, 4)

    def image_size(self, image_id: str) -> tuple[int, int]:
        """``(width, height)`` of the image the proposals were computed on."""
        info = self.info(image_id)
        return int(info["width"]), int(info["height"])

    def info(self, image_id: str) -> dict:
        """Per-image attributes: width, height, seconds, load_seconds, method, fallback, note, num_boxes."""
        item = self._get(image_id)
        d = {k: attr_value(v) for k, v in item.attrs.items()}
        d["num_boxes"] = int(item.shape[0])
        return d

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __repr__(self) -> str:
        return f"ProposalReader({str(self.path)!r}, method={self.attrs.get('method')!r})"


def _open_proposals(path: Path) -> h5py.File:
    """``path`` opened for reading; one-line :class:`UserError` when it is not a proposals file."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({e})") from None
    if attr_value(f.attrs.get("format")) != FORMAT or GROUP not in f:
        f.close()
        raise UserError(f"{path}: not a proposals file (made by `rcnn propose`)")
    return f


def merge_proposals(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Join proposals files (the shards of one ``rcnn propose --shard K/N`` run, or any files of the
    same settings) into ``out``; files of other settings are refused. Shards come back in the order
    of the unsharded run; an image present twice is taken from the first file."""
    from rcnn_cli.io import atomic_path, write_run_record

    paths = [Path(p) for p in inputs]
    if not paths:
        raise UserError("merge-proposals: give at least one input file")
    out = Path(out)
    if any(out.exists() and p.resolve() == out.resolve() for p in paths):
        raise UserError(f"{out}: the output is also an input")
    readers = [load(p) for p in paths]
    try:
        identity = {k: v for k, v in readers[0].attrs.items() if k not in _META_KEYS + ("shard",)}
        for p, r in zip(paths[1:], readers[1:]):
            other = {k: v for k, v in r.attrs.items() if k not in _META_KEYS + ("shard",)}
            diff = sorted(k for k in set(identity) | set(other) if identity.get(k) != other.get(k))
            if diff:
                raise UserError(f"{p} was made with other settings than {paths[0]} ({', '.join(diff)}); not merged")
        entries, seen = [], set()
        for fi, r in enumerate(readers):
            k, n = (int(v) for v in str(r.attrs.get("shard", f"{fi}/{len(readers)}")).split("/"))
            for i, image_id in enumerate(r.ids()):
                if image_id not in seen:
                    seen.add(image_id)
                    entries.append((i * n + k, fi, image_id))
        entries.sort()
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                for key, value in readers[0].attrs.items():
                    f.attrs[key] = h5_attr(value)
                f.attrs["shard"] = "merged"
                group = f.create_group(GROUP, track_order=True)
                for _, fi, image_id in entries:
                    ds = _write_image(group, escape_id(image_id), dict(readers[fi].info(image_id),
                                                                       boxes=readers[fi].boxes(image_id)))
                    ds.attrs.update({"image_id": image_id, "complete": True})
            fsync_path(tmp)
    finally:
        for r in readers:
            r.close()
    write_run_record(out, "rcnn merge-proposals", {"inputs": [str(p) for p in paths], "images": len(entries)})
    return {"images": len(entries), "inputs": len(paths), "out": str(out)}


def boxes_for(reader, image_id: str, size: tuple[int, int]) -> np.ndarray:
    """``reader.boxes(image_id)`` in the pixels of an image of ``size`` ``(width, height)``: rescaled
    when the proposals were computed on another size of the image (any reader with ``boxes`` and,
    optionally, ``image_size``)."""
    from rcnn_cli.boxes import resize_boxes

    boxes = np.asarray(reader.boxes(image_id), np.float32).reshape(-1, 4)
    try:
        pw, ph = reader.image_size(image_id)
    except (AttributeError, KeyError, ValueError):  # a file or reader without sizes: the same image
        return boxes
    return resize_boxes(boxes, (pw, ph), size) if (pw, ph) != tuple(size) and pw and ph else boxes


def load(path: str | os.PathLike) -> ProposalReader:
    """Open a proposals file lazily; :class:`UserError` if it is missing or not a proposals file."""
    return ProposalReader(path)


# ----------------------------------------------------------------------------------------------
# recall (Hosang et al., "What makes for effective detection proposals?")
# ----------------------------------------------------------------------------------------------
