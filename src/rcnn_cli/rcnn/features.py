"""R-CNN region features: warping with context padding, the extractor, and the HDF5 features store.

Warping (Girshick et al. 2014, appendix A, "warp with context padding p=16")
--------------------------------------------------------------------------
Each box ``(x1, y1, x2, y2)`` (continuous pixels) is enlarged about its centre by
``S / (S - 2p)`` so that, once the enlarged box is warped anisotropically to ``S x S``, the
original box covers the central ``(S - 2p) x (S - 2p)`` pixels and ``p`` pixels of context
surround it at the warped scale. Parts of the enlarged box outside the image are zero *after*
mean subtraction: the image is normalised first and then padded with zeros. The warp is one
batched ``torchvision.ops.roi_align`` call per chunk of boxes (``aligned=True``: pixel ``i``
covers ``[i, i+1)``; ``sampling_ratio=0``: ``ceil(bin size)`` bilinear samples per output pixel
and axis, i.e. plain bilinear interpolation when enlarging and an area average when shrinking).
This matches PIL's ``Image.resize(BILINEAR, box=...)`` crop-and-resize to about 1/255 when
enlarging and to a few percent (mean ~1 %) when shrinking by 4-6x, where PIL's triangle filter
and roi_align's box average differ; R-CNN's MATLAB ``imresize(..., 'antialiasing', false)``
would alias there instead (``sampling_ratio=1``, errors up to 0.5 against PIL).

Features store (HDF5)
---------------------
File attributes: ``format="rcnn-features"``, ``format_version``, ``version`` (package),
``backbone``, ``weights`` (as given), ``weights_id``, ``layer``, ``feature_dim``, ``warp_size``,
``padding``, ``normalization``, ``dtype``, ``max_proposals`` (0 = all), ``labelled``,
``classes`` (JSON list, dataset order; index ``i`` in ``labels`` is ``classes[i-1]``),
``proposals`` (JSON of the proposal settings), ``input_count``, ``shard`` and ``config`` (JSON).
Group ``/images`` holds one group per image (name: the id with ``%``, ``/`` and ``.`` escaped;
attributes ``image_id``, ``width``, ``height``, ``order`` = index in the full input list):

- ``features`` ``(N, D)`` ``dtype`` (float16 by default), chunked by rows, optional compression
- ``boxes`` ``(N, 4)`` float32: ground-truth boxes first (labelled data), then proposals in rank order
- ``gt`` ``(N,)`` bool, ``overlaps`` ``(N,)`` float32 (max continuous IoU with any ground truth),
  ``labels`` ``(N,)`` int64 (class 1..K of that ground truth, 0 when it does not overlap any),
  ``gt_index`` ``(N,)`` int64 (index into the image's training targets, -1 for none).

Ground truth is ``Dataset.training_targets`` (the package's one bad-box policy: bad boxes are
skipped with a warning, boxes past the border are clipped).

Crash safety and resuming
-------------------------
The store is :class:`rcnn_cli.io.store.ImageStore` (part files renamed into place, the final file
built once at the end; see there). Each image's features are computed from that image alone
(batches never span images), so a resumed or sharded run stores exactly the values of an
uninterrupted one. A store whose parts are not yet joined is refused by :class:`FeatureReader`
(rerun the same command to finish it).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as TF
from torchvision.ops import roi_align

from rcnn_cli import __version__
from rcnn_cli.backbones import build_feature_extractor, get_spec, normalize, weights_id as make_weights_id
from rcnn_cli.boxes import iou_matrix
from rcnn_cli.io.files import fsync_path
from rcnn_cli.io.hdf5 import StoreReader, attr_value, h5_attr
from rcnn_cli.io.store import ImageStore, parts_dir
from rcnn_cli.config import parse_shard
from rcnn_cli.device import resolve_device
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.log import logger, progress_bar
from rcnn_cli.memory import release_memory, reuse_memory
from rcnn_cli.method import DEFAULT_BACKBONE

__all__ = [
    "FeatureConfig",
    "enlarge_boxes",
    "warp_regions",
    "region_targets",
    "FeatureExtractor",
    "FeatureReader",
    "load_features",
    "run_extract_features",
    "merge_features",
    "parse_shard",
    "SETTING_KEYS",
]

FORMAT = "rcnn-features"
FORMAT_VERSION = 1
#: File attributes that must agree to resume into, or merge, feature files.
SETTING_KEYS = ("format", "format_version", "backbone", "weights_id", "layer", "feature_dim", "warp_size", "padding",
                "normalization", "dtype", "max_proposals", "labelled", "classes", "proposals")
DTYPES = {"float16": np.float16, "float32": np.float32}


# ------------------------------------------------------------------------------------ warping


def enlarge_boxes(boxes: torch.Tensor, warp_size: int, padding: int = 16) -> torch.Tensor:
    """Boxes ``(N, 4)`` enlarged about their centres by ``S / (S - 2p)`` (R-CNN context padding).

    After warping the result to ``S x S`` the original box spans ``[p, S - p]`` on both axes.
    """
    boxes = boxes.float()
    if padding <= 0:
        return boxes.clone()
    if 2 * padding >= warp_size:
        raise UserError(f"--padding {padding} leaves no room in a {warp_size}-pixel warp (need 2*padding < warp size)")
    scale = warp_size / (warp_size - 2.0 * padding)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([c - half, c + half], dim=1)


def warp_regions(image: torch.Tensor, boxes: torch.Tensor, warp_size: int, padding: int = 16) -> torch.Tensor:
    """Warp regions of one image as R-CNN does: ``(3, H, W)`` NORMALISED, boxes ``(N, 4)`` -> ``(N, 3, S, S)``.

    Context padding ``padding`` pixels at the warped scale; outside the image = 0 (after
    normalisation). Runs on ``image``'s device and dtype.
    """
    boxes = torch.as_tensor(boxes, device=image.device).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return image.new_zeros((0, 3, warp_size, warp_size))
    # A 1-pixel zero border is enough: roi_align clamps samples within one pixel of the border to
    # the edge (now zero) and returns 0 beyond it, so everything outside the image reads as 0.
    padded = TF.pad(image, (1, 1, 1, 1))[None]
    rois = enlarge_boxes(boxes.float(), warp_size, padding) + 1.0
    rois = torch.cat([rois.new_zeros((n, 1)), rois], dim=1).to(image.dtype)
    return roi_align(padded, rois, (warp_size, warp_size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def region_targets(boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Regions = ground truth first, then ``boxes``; per region its max IoU with any ground truth.

    Returns ``boxes (N, 4)`` float32, ``gt (N,)`` bool, ``overlaps (N,)`` float32, ``labels (N,)``
    int64 (class of the best-overlapping ground truth, 0 if the overlap is 0) and ``gt_index``
    ``(N,)`` int64 (-1 if none). Ties go to the lowest ground-truth index.
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    props = np.asarray(boxes, np.float32).reshape(-1, 4)
    regions = np.concatenate([gt_boxes, props]).astype(np.float32)
    n, m = len(regions), len(gt_boxes)
    is_gt = np.zeros(n, bool)
    is_gt[:m] = True
    overlaps = np.zeros(n, np.float32)
    labels = np.zeros(n, np.int64)
    index = np.full(n, -1, np.int64)
    if m and n:
        iou = iou_matrix(regions, gt_boxes)
        best = iou.argmax(axis=1)
        overlaps = iou[np.arange(n), best].astype(np.float32)
        hit = overlaps > 0
        labels[hit] = gt_labels[best[hit]]
        index[hit] = best[hit]
    return {"boxes": regions, "gt": is_gt, "overlaps": overlaps, "labels": labels, "gt_index": index}


# ---------------------------------------------------------------------------------- extractor


def image_to_tensor(image) -> torch.Tensor:
    """``(3, H, W)`` uint8 tensor from an RGB PIL image (the prefetch threads' output)."""
    arr = np.array(image, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr[:, :, :3])).permute(2, 0, 1)


class FeatureExtractor:
    """R-CNN features of regions of one image at a time: warp, backbone, cast.

    ``extractor(image, boxes)``: RGB PIL image (or ``(3, H, W)`` uint8 tensor) and ``(N, 4)``
    boxes in its pixels -> ``(N, D)`` float32 features, rounded through ``dtype`` (float16 by
    default) so that train-time (stored) and test-time features are the same numbers. Boxes are
    processed in chunks of ``batch_size`` that never mix images, so values do not depend on what
    else is processed. CUDA: bf16 autocast (fp16 where bf16 is unsupported); CPU: float32.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | os.PathLike = "imagenet",
                 layer: str | None = None, warp_size: int | None = None, padding: int = 16, batch_size: int = 64,
                 device: str | torch.device = "auto", dtype: str = "float16", runtime: str = "torch",
                 cache_dir: str | os.PathLike | None = None):
        self.spec = get_spec(backbone)
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype}: choose float16 or float32")
        self.layer = layer or self.spec.default_layer
        self.warp_size = int(warp_size or self.spec.native_size)
        self.padding = int(padding)
        if self.warp_size < 16:
            raise UserError(f"--warp-size {self.warp_size}: too small (at least 16)")
        if self.padding < 0 or 2 * self.padding >= self.warp_size:
            raise UserError(f"--padding {self.padding}: must be >= 0 and less than half the warp size {self.warp_size}")
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: must be at least 1")
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.device = resolve_device(device)
        self.model = build_feature_extractor(backbone, weights, self.layer, self.warp_size).eval().to(self.device)
        self.out_dim = int(self.model.out_dim)
        self.weights = str(weights)
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = None
        self.config = {
            "backbone": backbone,
            "weights_id": make_weights_id(backbone, weights),
            "layer": self.layer,
            "feature_dim": self.out_dim,
            "warp_size": self.warp_size,
            "padding": self.padding,
            "normalization": self.spec.normalization,
            "dtype": dtype,
            "version": __version__,
        }
        self.runtime = self._compile(runtime, cache_dir)

    def _compile(self, runtime: str, cache_dir: str | os.PathLike | None) -> str:
        """The network in ``runtime`` (torch channels_last, or an exported graph on the CPU)."""
        from rcnn_cli.backends import compile_network, resolve_runtime

        runtime = resolve_runtime(runtime, self.device.type, self.spec.name != "hog")
        if self.spec.name == "hog" and runtime != "torch":
            raise UserError(f"--runtime {runtime}: HOG runs in OpenCV; use --runtime torch")
        if runtime != "torch" and self.device.type != "cpu":
            raise UserError(f"--runtime {runtime} runs on the CPU; use --device cpu or --runtime torch")
        example = torch.rand(2, 3, self.warp_size, self.warp_size, generator=torch.Generator().manual_seed(0))
        key = {k: self.config[k] for k in ("backbone", "weights_id", "layer", "warp_size")}
        folder = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "rcnn" / "graphs"
        self.network = compile_network(self.model, runtime, normalize(example, self.spec), folder, key)
        return runtime

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, image) -> torch.Tensor:
        """Normalised ``(3, H, W)`` float32 image on the device."""
        t = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
        t = t.to(self.device, non_blocking=True)
        t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
        return normalize(t, self.spec)

    @torch.inference_mode()
    def __call__(self, image, boxes: np.ndarray) -> np.ndarray:
        boxes_t = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
        out = np.empty((len(boxes_t), self.out_dim), dtype=DTYPES[self.dtype])
        if len(boxes_t) == 0:
            return out.astype(np.float32)
        img = self.prepare(image)
        boxes_t = boxes_t.to(self.device)
        for start in range(0, len(boxes_t), self.batch_size):
            chunk = boxes_t[start:start + self.batch_size]
            crops = warp_regions(img, chunk, self.warp_size, self.padding)
            with self._autocast():
                feats = self.network(crops)
            out[start:start + len(chunk)] = feats.float().cpu().numpy().astype(out.dtype)
        return out.astype(np.float32)


# ----------------------------------------------------------------------------- HDF5 helpers


def _decoded(attrs: dict[str, Any]) -> dict[str, Any]:
    """File attributes with ``classes`` and ``proposals`` read back from JSON."""
    out = dict(attrs)
    for key in ("classes", "proposals"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out


def _settings(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: attrs.get(k) for k in SETTING_KEYS}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in SETTING_KEYS if a.get(k) != b.get(k)]


def _write_image(group: h5py.Group, name: str, rec: dict[str, np.ndarray], width: int, height: int,
                 compression: str | None) -> h5py.Group:
    g = group.create_group(name)
    g.attrs.update({"width": int(width), "height": int(height)})
    feats = rec["features"]
    n, d = feats.shape
    comp = {} if compression in (None, "none") else {"compression": compression}
    g.create_dataset("features", data=feats, chunks=(max(1, min(n, 256)), d), **comp)
    for key in ("boxes", "gt", "overlaps", "labels", "gt_index"):
        g.create_dataset(key, data=rec[key])
    return g


# ------------------------------------------------------------------------------------ reader


class FeatureReader(StoreReader):
    """Lazy reader of a features store (also a context manager).

    ``get(image_id)`` returns ``features (N, D)`` (stored dtype), ``boxes (N, 4)`` float32,
    ``gt (N,)`` bool, ``overlaps (N,)`` float32, ``labels (N,)`` int64, ``gt_index (N,)`` int64.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            parts = parts_dir(self.path)
            if parts.is_dir():
                raise UserError(f"{self.path}: extraction not finished (parts in {parts}); rerun the same command")
            raise UserError(f"{self.path}: features file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise UserError(f"{self.path}: not a readable HDF5 file ({e})") from None
        self.attrs = _decoded({k: attr_value(v) for k, v in self._f.attrs.items()})
        if self.attrs.get("format") != FORMAT or "images" not in self._f:
            self._f.close()
            raise UserError(f"{self.path}: not an rcnn features file")
        self.classes: list[str] = list(self.attrs.get("classes") or [])
        self._names = {attr_value(g.attrs["image_id"]): name for name, g in self._f["images"].items()}
        order = {i: int(self._f["images"][n].attrs.get("order", 0)) for i, n in self._names.items()}
        self._ids = sorted(self._names, key=lambda i: order[i])

    def ids(self) -> list[str]:
        """Image ids in file (input) order."""
        return list(self._ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._names

    def __len__(self) -> int:
        return len(self._ids)

    def _group(self, image_id: str) -> h5py.Group:
        try:
            return self._f["images"][self._names[image_id]]
        except KeyError:
            raise UserError(f"{self.path}: no features for image '{image_id}'") from None

    def get(self, image_id: str) -> dict[str, np.ndarray]:
        g = self._group(image_id)
        return {k: g[k][()] for k in ("features", "boxes", "gt", "overlaps", "labels", "gt_index")}

    def image_size(self, image_id: str) -> tuple[int, int]:
        """``(width, height)`` of the image."""
        g = self._group(image_id)
        return int(g.attrs["width"]), int(g.attrs["height"])

    def close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None

    def __repr__(self) -> str:
        return f"FeatureReader({self.path}, {len(self._ids)} images, {self.attrs.get('backbone')}/{self.attrs.get('layer')})"


def load_features(path: str | os.PathLike) -> FeatureReader:
    """Open a features store written by :func:`run_extract_features` or :func:`merge_features`."""
    return FeatureReader(path)


# --------------------------------------------------------------------------------- the store


def _checker(settings: dict[str, Any]):
    """The store's ``check``: refuse a file whose settings differ from ``settings``."""
    def check(path: Path, attrs: dict[str, Any]) -> None:
        diff = _diff(_settings(_decoded(attrs)), settings)
        if diff:
            raise UserError(f"{path} was made with other settings ({'; '.join(diff)}): use another --out "
                            "or --overwrite")
    return check


def _load_uint8(path: Path) -> torch.Tensor:
    from rcnn_cli.data.images import load_image

    return image_to_tensor(load_image(path))


def _proposal_settings(reader) -> dict[str, Any]:
    a = dict(getattr(reader, "attrs", {}) or {})
    keep = {k: a.get(k) for k in ("method", "mode", "max_size", "min_size", "limit")}
    keep.update({k: a[k] for k in ("model", "post_nms_top_n") if k in a})  # RPN proposals: the run that made them
    return {k: v.item() if hasattr(v, "item") else v for k, v in keep.items()}


@dataclass(frozen=True)
class FeatureConfig:
    """What a features file is made with (recorded in it; resuming into it with other settings is refused).

    ``backbone``, ``weights`` (``imagenet``, ``none`` or a ``.safetensors`` file) and ``layer`` (the
    backbone's default when ``None``) pick the network; each region is warped to ``warp_size``
    (the backbone's native size when ``None``) with ``padding`` pixels of context; ``batch_size``
    regions per forward pass; features stored as ``dtype``; ``max_proposals``: the top-K proposals
    per image (``None``: all); ``compression``: ``none``, ``gzip`` or ``lzf``; ``runtime``: the
    network's (``torch``, ``onnxruntime``, ``openvino``, ``auto``); ``device``: ``auto``, ``cpu``, ``cuda``.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    layer: str | None = None
    warp_size: int | None = None
    padding: int = 16
    batch_size: int = 64
    dtype: str = "float16"
    max_proposals: int | None = None
    compression: str | None = None
    runtime: str = "torch"
    device: str = "auto"

    def check(self) -> None:
        if self.max_proposals is not None and self.max_proposals < 0:
            raise UserError(f"--max-proposals {self.max_proposals}: must be >= 0")
        if self.compression not in (None, "none", "gzip", "lzf"):
            raise UserError(f"--compression {self.compression}: choose none, gzip or lzf")


def run_extract_features(data, proposals, out: str | os.PathLike, config: FeatureConfig | None = None, *,
                         shard: tuple[int, int] | str | None = None, progress: bool = True, prefetch: int = 4,
                         checkpoint_seconds: float = 20.0, overwrite: bool = False,
                         command: str = "rcnn extract-features",
                         extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """Extract R-CNN features of every region of every image into the HDF5 store ``out`` with the
    settings ``config`` (:class:`FeatureConfig`; ``None``: its defaults).

    ``data``: a labelled :class:`rcnn_cli.data.dataset.Dataset` (ground-truth boxes become regions,
    with overlaps/labels) or a list of :class:`rcnn_cli.data.inputs.ImageInput` (unlabelled).
    ``proposals``: a :class:`rcnn_cli.proposals.ProposalReader` or a path. ``shard=(K, N)``: every
    N-th image from K. Resumable and crash-safe (see the module docstring); ``overwrite`` starts
    afresh; ``extractor``: a ready :class:`FeatureExtractor` (the network settings of ``config``
    are then its own). Images that fail to load or have no proposals entry are skipped with a
    warning. Returns ``{"images", "done_before", "extracted", "skipped", "regions", "seconds",
    "crops_per_second", "out"}``.
    """
    config = config or FeatureConfig()
    config.check()
    max_proposals, compression, weights = config.max_proposals, config.compression, config.weights
    from rcnn_cli import proposals as P
    from rcnn_cli.data.dataset import Dataset
    from rcnn_cli.io import write_run_record

    out = Path(out)
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    labelled = isinstance(data, Dataset)
    if labelled:
        items = [(r.image_id, r.path, r) for r in data.records]
        classes = list(data.classes)
    else:
        items = [(i.image_id, i.path, None) for i in data]
        classes = []
    input_count = len(items)
    indexed = list(enumerate(items))
    if shard is not None:
        k, n = shard
        indexed = indexed[k::n]

    own_reader = not hasattr(proposals, "boxes")
    reader = P.load(proposals) if own_reader else proposals
    try:
        fx = extractor or FeatureExtractor(config.backbone, weights, config.layer, config.warp_size, config.padding,
                                           config.batch_size, config.device, config.dtype, runtime=config.runtime,
                                           cache_dir=Path(out).parent / "graphs")
        file_attrs = {
            "format": FORMAT, "format_version": FORMAT_VERSION, **fx.config, "weights": str(weights),
            "max_proposals": int(max_proposals or 0), "labelled": bool(labelled), "classes": classes,
            "proposals": _proposal_settings(reader), "input_count": input_count,
            "shard": f"{shard[0]}/{shard[1]}" if shard else "all",
        }
        settings = _settings(file_attrs)
        run_config = {k: v for k, v in file_attrs.items() if k not in ("format", "format_version")}
        run_config.update({"batch_size": fx.batch_size, "device": str(fx.device), "runtime": fx.runtime,
                           "compression": compression,
                           "proposals_file": str(getattr(reader, "path", proposals))})
        file_attrs["config"] = json.dumps(run_config)
        with ImageStore(out, file_attrs, group="images", check=_checker(settings), what="extract-features",
                        checkpoint_seconds=checkpoint_seconds, overwrite=overwrite) as store:
            done = dict(store.done)
            todo = [(order, it) for order, it in indexed if it[0] not in done]
            missing = [it[0] for _, it in todo if it[0] not in reader]
            if indexed and not any(it[0] in reader for _, it in indexed):
                raise UserError(f"{getattr(reader, 'path', proposals)} holds proposals for none of the "
                                f"{len(indexed)} images (wrong --proposals file or --split?)")
            for image_id in missing:
                logger.warning("%s: no proposals for this image in %s; skipped", image_id, getattr(reader, "path", ""))
            todo = [(order, it) for order, it in todo if it[0] in reader]
            stats = _extract_loop(fx, reader, data if labelled else None, todo, store, max_proposals, compression,
                                  progress, prefetch, len(indexed))
            stats["done_before"] = len(done)
            store.finish()
        write_run_record(out, command, run_config)
    finally:
        if own_reader:
            reader.close()
    stats.update({"images": len(indexed), "skipped": stats["skipped"] + len(missing), "out": str(out)})
    return stats


def _extract_loop(fx: FeatureExtractor, reader, dataset, todo: list, store: ImageStore, max_proposals: int | None,
                  compression: str | None, progress: bool, prefetch: int, total: int) -> dict[str, Any]:
    """Extract ``todo`` (``(order, (image_id, path, record))``) into ``store``; the run's counts."""
    reuse_memory()  # the batches of one image reuse their blocks; release_memory() trims after each image
    extracted = skipped = regions = 0
    t0 = time.perf_counter()
    prefetch = max(1, int(prefetch))
    pool = ThreadPoolExecutor(max_workers=min(2, prefetch), thread_name_prefix="rcnn-decode")
    queue: deque = deque()
    it = iter(todo)

    def fill() -> None:
        while len(queue) < prefetch:
            nxt = next(it, None)
            if nxt is None:
                return
            queue.append((nxt, pool.submit(_load_uint8, nxt[1][1])))

    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("extract-features", total=total, completed=total - len(todo), status="")
            fill()
            while queue:
                (order, (image_id, path, record)), fut = queue.popleft()
                fill()
                try:
                    img = fut.result()
                except ImageError as e:
                    logger.warning("%s; skipped", e)
                    skipped += 1
                    bar.update(task, advance=1)
                    continue
                height, width = int(img.shape[1]), int(img.shape[2])
                boxes = np.asarray(reader.boxes(image_id), np.float32).reshape(-1, 4)
                if max_proposals:
                    boxes = boxes[:max_proposals]
                if dataset is not None:
                    gt_boxes, gt_labels = dataset.training_targets(record, width, height)
                else:
                    gt_boxes, gt_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
                rec = region_targets(boxes, gt_boxes, gt_labels)
                feats = fx(img, rec["boxes"])
                n_regions = len(feats)
                rec["features"] = feats.astype(DTYPES[fx.dtype])
                store.add(image_id, order, partial(_write_image, rec=rec, width=width, height=height, compression=compression))
                del img, feats, rec
                release_memory()
                extracted += 1
                regions += n_regions
                now = time.perf_counter()
                rate = regions / max(now - t0, 1e-9)
                bar.update(task, advance=1, status=f"{rate:.0f} crops/s")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0
    return {"extracted": extracted, "skipped": skipped, "regions": regions,
            "seconds": seconds, "crops_per_second": regions / seconds if seconds > 0 else 0.0}


# ------------------------------------------------------------------------------------- merge


def merge_features(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Join feature files (e.g. shards) into ``out``; refuses files made with different settings.

    Images keep their input order (``order`` attribute) when all files come from the same input
    list, else the order of ``inputs``. An image id present in two files is taken from the first.
    """
    from rcnn_cli.io import atomic_path, write_run_record

    if not inputs:
        raise UserError("merge-features: give at least one input file")
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if any(p.resolve() == out.resolve() for p in paths if out.exists()):
        raise UserError(f"{out}: the output is also an input")
    readers = [load_features(p) for p in paths]
    try:
        base = _settings(readers[0].attrs)
        for p, r in zip(paths[1:], readers[1:]):
            diff = _diff(base, _settings(r.attrs))
            if diff:
                raise UserError(f"{p} was made with other settings than {paths[0]} ({'; '.join(diff)}); not merged")
        same_inputs = len({r.attrs.get("input_count") for r in readers}) == 1
        entries, seen, dups = [], set(), 0
        for fi, r in enumerate(readers):
            for image_id in r.ids():
                if image_id in seen:
                    dups += 1
                    continue
                seen.add(image_id)
                name = r._names[image_id]
                order = int(r._f["images"][name].attrs.get("order", 0))
                entries.append(((order, fi) if same_inputs else (fi, order), fi, name))
        if dups:
            logger.warning("merge-features: %d image(s) present in more than one input; the first copy is kept", dups)
        entries.sort(key=lambda e: e[0])
        attrs = dict(readers[0].attrs)
        attrs["shard"] = "merged"
        attrs["merged_from"] = [str(p) for p in paths]
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as dst:
                dst.attrs.update({k: h5_attr(v) for k, v in attrs.items()})
                images = dst.create_group("images", track_order=True)
                for _, fi, name in entries:
                    src = readers[fi]._f
                    src.copy(src["images"][name], images, name=name)
            fsync_path(tmp)
    finally:
        for r in readers:
            r.close()
    write_run_record(out, "rcnn merge-features", {"inputs": [str(p) for p in paths], "images": len(entries)})
    return {"images": len(entries), "inputs": len(paths), "duplicates": dups, "out": str(out)}
