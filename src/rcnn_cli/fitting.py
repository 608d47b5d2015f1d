"""Settings fitted to the user's data: training-split statistics -> chosen values, each with its reason.

Every detector's defaults that depend on the data live here, one rule per setting, reading only the
training split's statistics (:class:`DataStats`) and the backbone's stride:

- **image scale** (:func:`image_scale`): the images' own resolution (median shorter side), upscaled
  only as far as the smallest class needs (its 10th-percentile box reaching ``MIN_OBJECT`` pixels, two
  cells of a stride-16 map), never below ``MIN_CELLS`` cells of the map on the shorter side, never
  above the device's cap (CPU 640, GPU 800); the longer side follows the median aspect ratio;
- **multi-scale training sizes** (:func:`training_sizes`): shorter sides within +-13 % of the test
  size in steps of 32 pixels (scale augmentation, free at test time);
- **anchors**: class-balanced quantiles of the training boxes at the chosen scale
  (:func:`anchor_sizes_from`);
- **RPN boxes before NMS in training**: the paper's 12000 on a GPU, torchvision's 2000 on a CPU, where
  that NMS is a third of each iteration;
- **epochs** (:func:`default_epochs`): at least 12 and at least ``MIN_ITERATIONS`` iterations;
- **crowded images** (:func:`fit_crowding`): Faster R-CNN's RPN proposals at test (the paper's 300, or
  ``PROPOSALS_PER_OBJECT`` per object of the most crowded training image) and detections kept per
  image (COCO's 100, or twice that image's objects; R-CNN's too);
- **R-CNN** (:func:`fit_rcnn`): proposals per image from the objects per image, the smallest
  proposal from the smallest class, selective search's image size from the images', the warp from
  the median box (within the device's range), context padding a tenth of the warp, and the 2x2 grid
  layer where the backbone has one.

A value the user gave always wins; :class:`Fitted` records which values were chosen and why, for the
table printed once and the run's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Collection, Mapping

import numpy as np

from rcnn_cli.errors import UserError

__all__ = ["DataStats", "data_stats", "Fitted", "image_scale", "training_sizes", "anchor_sizes_from",
           "default_epochs", "detections_per_image", "fit_crowding", "fits_anchors", "fit_faster", "fit_fast", "fit_rcnn",
           "MIN_OBJECT", "MIN_CELLS"]

MIN_OBJECT = 32          # pixels: two cells of a stride-16 feature map
MIN_CELLS = 30           # cells of the stride-16 map on the shorter side at least (480 px)
SIZE_CAP = {"cpu": 640, "cuda": 800}  # the shorter side at most, per device type
MIN_ITERATIONS = 1000    # a default schedule has at least this many iterations
TRAIN_SCALE_JITTER = (0.87, 0.93, 1.0, 1.07, 1.13)
#: Faster R-CNN's RPN proposals per test image, the paper's (the least the crowding rule keeps).
RPN_TEST_PROPOSALS = 300
PROPOSALS_PER_OBJECT = 5  # R-CNN: per object of a crowded (90th-percentile) image; the RPN: of the most crowded
MIN_PROPOSALS = 100      # R-CNN: proposals per image at least
MAX_PROPOSAL_FLOOR = 16  # pixels: R-CNN drops proposals smaller than this at most
SEARCH_SIDE_CAP = 512    # pixels: selective search's longer image side at most
WARP_RANGE = {"cpu": (64, 128), "cuda": (64, 224)}  # R-CNN's warp per device type


def _round32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


@dataclass
class DataStats:
    """Statistics of a training split: one entry per image (``short``, ``long``: sides in pixels;
    ``objects``: valid boxes) and per valid box (``sizes``: sqrt of the area in original pixels;
    ``ratios``: height / width; ``labels``; ``image_wh``: its image's width and height; ``longest``:
    its longer side in pixels)."""

    classes: list[str]
    short: np.ndarray
    long: np.ndarray
    objects: np.ndarray
    sizes: np.ndarray
    ratios: np.ndarray
    labels: np.ndarray
    image_wh: np.ndarray
    longest: np.ndarray
    invalid: int = 0

    @property
    def images(self) -> int:
        return len(self.short)

    def class_quantile(self, q: float) -> dict[str, float]:
        """The ``q`` quantile (0..1) of the box sizes of each class present."""
        return {c: float(np.quantile(self.sizes[self.labels == c], q)) for c in self.classes
                if (self.labels == c).any()}

    def smallest(self) -> tuple[str, float]:
        """The class with the smallest 10th-percentile box, and that size (pixels)."""
        c, v = min(self.class_quantile(0.1).items(), key=lambda kv: kv[1])
        return c, v

    def aspect(self) -> float:
        """The median longer / shorter side of the images."""
        return float(np.median(self.long / np.maximum(self.short, 1)))


def data_stats(dataset) -> DataStats:
    """:class:`DataStats` of a dataset split (boxes clipped to their image; zero-area, inverted and
    wholly outside boxes counted in ``invalid``). A split with no valid box is a one-line error."""
    from rcnn_cli.boxes import valid_box_mask
    from rcnn_cli.data.images import image_size

    short, long, objects, sizes, ratios, labels, wh, longest = [], [], [], [], [], [], [], []
    invalid = total = 0
    for rec in dataset.records:
        w, h = rec.width, rec.height
        if not w or not h:
            try:
                w, h = image_size(rec.path)
            except UserError:
                continue
        boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        keep = valid_box_mask(boxes, w, h)
        b = boxes[keep].copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        ok = (bw > 0) & (bh > 0)
        total += len(boxes)
        invalid += len(boxes) - int(ok.sum())
        short.append(min(w, h)), long.append(max(w, h)), objects.append(int(ok.sum()))
        sizes.append(np.sqrt(bw[ok] * bh[ok])), ratios.append(bh[ok] / bw[ok]), longest.append(np.maximum(bw, bh)[ok])
        labels.append(np.asarray(rec.labels, dtype=object)[keep][ok])
        wh.append(np.tile([w, h], (int(ok.sum()), 1)))
    if not sum(objects):
        raise UserError(f"{getattr(dataset, 'root', 'the dataset')}: none of the {total} boxes of split "
                        f"'{getattr(dataset, 'split', '')}' is valid (zero-area, inverted or outside its image): "
                        "nothing to train on")
    cat = lambda parts, dtype=np.float64: np.concatenate(parts).astype(dtype)  # noqa: E731
    return DataStats(list(dataset.classes), np.asarray(short, np.float64), np.asarray(long, np.float64),
                     np.asarray(objects), cat(sizes), cat(ratios), cat(labels, object), cat(wh).reshape(-1, 2),
                     cat(longest), invalid)


@dataclass
class Fitted:
    """Settings chosen from the data: ``values[name]`` and ``reasons[name]``; ``given`` names the
    settings the user gave (never changed here)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)

    def choose(self, name: str, value: Any, reason: str) -> None:
        if name in self.given:
            return
        self.values[name], self.reasons[name] = value, reason

    def record(self) -> dict[str, dict[str, Any]]:
        """``{name: {"value", "reason"}}`` for the run's record."""
        return {k: {"value": self.values[k], "reason": self.reasons[k]} for k in self.values}

    def print(self, title: str) -> None:
        """The table of chosen values, once (rank 0 of a distributed run only)."""
        from rich.table import Table

        from rcnn_cli.log import console
        from rcnn_cli.device import dist_info

        if not self.values or dist_info()[0] != 0:
            return
        table = Table(title=title, title_justify="left")
        for col in ("setting", "chosen", "because"):
            table.add_column(col, overflow="fold")
        for k, v in self.values.items():
            shown = ", ".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else str(v)
            table.add_row(k, shown, self.reasons[k])
        if not console.is_terminal:  # a log file: one line per setting, reasons unwrapped
            from rich.console import Console

            console = Console(stderr=True, width=160)
        console.print(table)


def image_scale(stats: DataStats, device_type: str = "cpu", stride: int = 16) -> tuple[int, int, str]:
    """``(min_size, max_size, reason)``: the shorter side the images are resized to (a multiple of
    32) and the longer side's cap; see the module docstring."""
    native = float(np.median(stats.short))
    cls, small = stats.smallest()
    need = MIN_OBJECT / max(small, 1e-6)
    floor, cap = MIN_CELLS * stride, SIZE_CAP.get(device_type, SIZE_CAP["cpu"])
    size = min(max(_round32(native * max(need, 1.0)), floor), cap)
    why = [f"images' median shorter side {native:.0f} px"]
    if _round32(native * need) > _round32(native):
        why.append(f"x{need:.2f} so that {cls}'s 10th-percentile box ({small:.0f} px) reaches {MIN_OBJECT} px")
    else:
        why.append(f"{cls}'s 10th-percentile box ({small:.0f} px) needs no upscaling")
    if size == floor and native * max(need, 1.0) < floor:
        why.append(f"raised to {MIN_CELLS} cells of the stride-{stride} map")
    if size == cap and native * max(need, 1.0) > cap:
        why.append(f"capped at {cap} on {device_type}" + (f" ({cls}'s 10th percentile then {small * cap / native:.0f} px;"
                                                           f" --min-size {_round32(native * need)} keeps {MIN_OBJECT})"
                                                           if small * cap / native < MIN_OBJECT else ""))
    max_size = _round32(size * stats.aspect())
    return size, max_size, "; ".join(why) + f"; longer side {stats.aspect():.2f}x (median aspect)"


def training_sizes(min_size: int) -> list[int]:
    """Multi-scale training: shorter sides within +-13 % of ``min_size``, multiples of 32."""
    return sorted({_round32(min_size * f) for f in TRAIN_SCALE_JITTER})


def anchor_sizes_from(stats: DataStats, n: int, min_size: int, max_size: int) -> list[float]:
    """``n`` anchor sizes (pixels of the resized image): class-balanced quantiles at ``(i + 0.5) / n``
    of the log box sizes, each box scaled as its image is resized (shorter side ``min_size``, longer at
    most ``max_size``), rounded to integers (at least 4, increasing); every class weighs the same, so
    3000 red cells do not drown 300 platelets."""
    w, h = stats.image_wh[:, 0], stats.image_wh[:, 1]
    scale = np.minimum(min_size / np.minimum(w, h), max_size / np.maximum(w, h))
    s = np.log(stats.sizes * scale)
    weights = np.zeros(len(s))
    for c in set(stats.labels.tolist()):
        m = stats.labels == c
        weights[m] = 1.0 / m.sum()
    order = np.argsort(s)
    s, weights = s[order], weights[order]
    cdf = (np.cumsum(weights) - 0.5 * weights) / weights.sum()
    out = [float(max(4, round(v))) for v in np.exp(np.interp((np.arange(n) + 0.5) / n, cdf, s))]
    for i in range(1, len(out)):  # distinct, increasing
        out[i] = max(out[i], out[i - 1] + 1)
    return out


def default_epochs(images: int, batch_size: int) -> int:
    """At least 12 epochs and at least ``MIN_ITERATIONS`` iterations, at most 50 epochs."""
    per_epoch = max(1, math.ceil(images / max(batch_size, 1)))
    return int(min(50, max(12, math.ceil(MIN_ITERATIONS / per_epoch))))


def fits_anchors(cfg: Any, given: Collection[str]) -> bool:
    """Whether Faster R-CNN's anchor sizes are chosen from the data: not when given, nor when
    ``auto_anchors`` was given false; otherwise as the configuration's ``anchors_follow_data`` says
    (a single level and the EfficientNet-Lite pyramids: yes; the pyramids of torchvision's COCO
    detectors: only when ``auto_anchors`` was given true)."""
    if "anchor_sizes" in given:
        return False
    if "auto_anchors" in given:
        return bool(cfg.auto_anchors)
    return bool(cfg.anchors_follow_data)


def fit_faster(stats: DataStats, cfg: Any, given: Collection[str] = (), device_type: str = "cpu",
               batch_size: int = 2, schedule: bool = True) -> tuple[Any, Fitted]:
    """Faster R-CNN's configuration ``cfg`` (a :class:`rcnn_cli.models.faster_rcnn.FasterRCNNConfig`)
    with every data-dependent field not named in ``given`` chosen from ``stats`` (``min_size``,
    ``train_min_sizes``, ``max_size``, ``anchor_sizes`` as :func:`fits_anchors` says, the RPN's
    training pre-NMS and test post-NMS counts, ``box_detections_per_img``), and the :class:`Fitted`
    record of the chosen values with their reasons (``epochs`` too with ``schedule``: not a model
    field, the caller applies it). The chosen values follow the given ones (training sizes around a
    given ``min_size``, ...)."""
    f = Fitted(given=set(given))
    size, _, why = image_scale(stats, device_type)
    f.choose("min_size", size, why)
    size = int(f.values.get("min_size", cfg.min_size))
    f.choose("train_min_sizes", training_sizes(size), f"scale augmentation: shorter sides within +-13 % of {size}")
    train_max = max([int(v) for v in f.values.get("train_min_sizes", cfg.train_min_sizes) or []] + [size])
    f.choose("max_size", _round32(train_max * stats.aspect()),
             f"{stats.aspect():.2f} x the largest training size {train_max} (the images' median aspect ratio)")
    if fits_anchors(cfg, given):
        max_size = int(f.values.get("max_size", cfg.max_size))
        f.choose("anchor_sizes", anchor_sizes_from(stats, len(cfg.anchor_sizes), size, max_size),
                 f"class-balanced quantiles of the {len(stats.sizes)} training boxes at {size} px")
    f.choose("rpn_pre_nms_top_n_train", 12000 if device_type == "cuda" else 2000,
             "the paper's 12000 on a GPU" if device_type == "cuda" else
             "torchvision's 2000 on a CPU (NMS over 12000 boxes is a third of each iteration)")
    fit_crowding(f, stats)
    if schedule:
        f.choose("epochs", default_epochs(stats.images, batch_size),
                 f"{stats.images} images, batch {batch_size}: at least 12 epochs and {MIN_ITERATIONS} iterations")
    chosen = {k: v for k, v in f.values.items() if k != "epochs"}
    return replace(cfg, **chosen, auto_anchors=cfg.auto_anchors or "anchor_sizes" in chosen), f


def _round_up(x: float, step: int) -> int:
    return int(math.ceil(x / step) * step)


def detections_per_image(stats: DataStats) -> tuple[int, str]:
    """Detections kept per image, and why: COCO's 100, or twice the objects of the most crowded
    training image where that is more (so that the cut never caps recall)."""
    from rcnn_cli.detector import DetectConfig

    most, least = int(stats.objects.max()), DetectConfig.top_k
    return (max(least, _round_up(2 * most, 50)),
            f"COCO's {least}, or twice the objects of the most crowded training image ({most})")


def fit_crowding(f: Fitted, stats: DataStats) -> None:
    """Choose Faster R-CNN's ``rpn_post_nms_top_n_test`` and ``box_detections_per_img`` from the most
    crowded training image (unchanged up to 60 and 50 objects per image)."""
    most, least = int(stats.objects.max()), RPN_TEST_PROPOSALS
    f.choose("rpn_post_nms_top_n_test", max(least, _round_up(PROPOSALS_PER_OBJECT * most, 100)),
             f"the paper's {least}, or {PROPOSALS_PER_OBJECT} per object of the most crowded training image "
             f"({most} objects)")
    f.choose("box_detections_per_img", *detections_per_image(stats))


def fit_fast(stats: DataStats, given: Mapping[str, Any], device_type: str = "cpu", batch_size: int = 2,
             stride: int = 16) -> Fitted:
    """Fast R-CNN's data-dependent settings that ``given`` leaves ``None`` or out: ``min_size``,
    ``max_size`` (the same image scale as Faster R-CNN's; no multi-scale training) and ``epochs``."""
    f = Fitted(given={k for k, v in given.items() if v is not None})
    size, _, why = image_scale(stats, device_type, stride)
    f.choose("min_size", size, why)
    size = int(given["min_size"]) if "min_size" in f.given else size
    f.choose("max_size", _round32(size * stats.aspect()), f"{stats.aspect():.2f} x {size} (the images' median aspect ratio)")
    f.choose("epochs", default_epochs(stats.images, batch_size),
             f"{stats.images} images, batch {batch_size}: at least 12 epochs and {MIN_ITERATIONS} iterations")
    return f


def fit_rcnn(stats: DataStats, given: Mapping[str, Any], method: str, method_reason: str, device_type: str = "cpu",
             layers: tuple[str, ...] = ("pool",)) -> Fitted:
    """The R-CNN pipeline's data-dependent settings that ``given`` leaves ``None`` or out (names as
    :class:`rcnn_cli.rcnn.pipeline.PipelineConfig` has them): ``method`` (decided by the
    caller, recorded with ``method_reason``), ``limit`` (proposals per image), ``min_size`` (the
    smallest proposal kept, pixels), ``max_size`` (selective search's longer image side),
    ``warp_size`` and ``padding`` (warped pixels), ``layer`` (when the backbone offers ``grid``),
    ``top_k`` (detections kept per image)."""
    f = Fitted(given={k for k, v in given.items() if v is not None})
    value = lambda name: given.get(name) if name in f.given else f.values.get(name)  # noqa: E731
    f.choose("method", method, method_reason)
    crowded = int(math.ceil(np.quantile(stats.objects, 0.9)))
    f.choose("limit", max(MIN_PROPOSALS, 50 * math.ceil(PROPOSALS_PER_OBJECT * crowded / 50)),
             f"each proposal costs one network pass: {PROPOSALS_PER_OBJECT} per object of a crowded image "
             f"(90th percentile: {crowded} objects), at least {MIN_PROPOSALS}")
    cls = min(stats.classes, key=lambda c: np.quantile(stats.longest[stats.labels == c], 0.1)
              if (stats.labels == c).any() else np.inf)
    small = float(np.quantile(stats.longest[stats.labels == cls], 0.1))
    f.choose("min_size", int(min(MAX_PROPOSAL_FLOOR, small // 2)),
             f"half the longer side of {cls}'s 10th-percentile box ({small:.0f} px), at most {MAX_PROPOSAL_FLOOR}")
    if value("method") == "selective-search":
        native = float(np.median(stats.long))
        f.choose("max_size", min(_round32(native), SEARCH_SIDE_CAP),
                 f"the images' median longer side {native:.0f} px, at most {SEARCH_SIDE_CAP} (selective search's "
                 "time grows with the pixels)")
    lo, hi = WARP_RANGE.get(device_type, WARP_RANGE["cpu"])
    median = float(np.median(stats.sizes))
    f.choose("warp_size", min(max(_round32(median), lo), hi),
             f"the median box ({median:.0f} px) at its own resolution, within {lo}-{hi} on {device_type} (the "
             "network's time grows with the warp's area)")
    warp = int(value("warp_size"))
    f.choose("padding", int(round(warp / 10)), f"a tenth of the {warp}-px warp of context on each side (R-CNN: 16 at 227)")
    f.choose("top_k", *detections_per_image(stats))
    if "grid" in layers:
        f.choose("layer", "grid", "the 2x2 grid keeps the layout that box regression reads (raccoon 74.1 vs 67.0 "
                                  "mAP pooled, the built-in data 94.1 vs 94.0; README)")
    return f
