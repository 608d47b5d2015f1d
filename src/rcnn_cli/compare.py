"""``rcnn compare``: the lecture's R-CNN vs Fast R-CNN vs Faster R-CNN table, measured here.

The three detectors are trained and evaluated with the same backbone, the same data and, for
R-CNN and Fast R-CNN, the same proposals files, all inside one folder ``OUT``:

==============  ==============================================  ===========================================
path            what                                            made by
==============  ==============================================  ===========================================
``data/``       built-in shapes data (when no DATASET)          :func:`rcnn_cli.data.shapes.make_shapes`
``rcnn/``       the whole R-CNN pipeline (its stages resume)    :func:`rcnn_cli.pipeline.run_pipeline`
``rcnn/proposals_<split>.h5``  selective search, shared by R-CNN and Fast R-CNN
``fast/``       Fast R-CNN run dir + test detections            :func:`rcnn_cli.models.fast_rcnn.train_fast_rcnn`
``faster/``     Faster R-CNN run dir, detections, RPN proposals :func:`rcnn_cli.models.faster_rcnn.train_faster`
``stages/``     compare's own stage records (config hashes)      :class:`rcnn_cli.pipeline.StageRunner`
``compare.json`` / ``compare.md`` / ``compare.png``  the table, its settings, the figure
==============  ==============================================  ===========================================

Every stage is skipped on a rerun when its recorded configuration hash matches (the pipeline's
:class:`~rcnn_cli.pipeline.StageRunner`); an interrupted Fast/Faster training of the same
configuration resumes from its checkpoint.

Timing (:func:`time_detector`, shared with ``scripts/bench_detect.py``): the detector objects
(:class:`~rcnn_cli.rcnn.RCNNDetector`, :class:`~rcnn_cli.models.fast_rcnn.FastRCNNDetector`,
:class:`~rcnn_cli.models.faster_rcnn.FasterRCNNDetector`) run on the first N test images, already
decoded in memory; selective search runs live with the training settings, so one pass gives both
"with proposals" (the whole call) and "without proposals" (the call minus its proposal stage).
Warm-up calls are excluded; per image the median over repeats, then the median over images.
The timings run in one fresh child process after all training (:func:`_time_in_child`): in the
process that trained, R-CNN's per-image time came out 1.3-1.7x slower than the same model timed
by ``scripts/bench_detect.py`` (heap and thread state left by training and feature extraction).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from rcnn_cli.errors import UserError
from rcnn_cli.log import console, logger

__all__ = ["METHODS", "BUDGETS", "METHOD_NAMES", "make_detector", "time_detector", "count_proposals",
           "threads_info", "budget_settings", "speedups", "run_compare", "print_table", "parse_methods", "parse_set"]

METHODS = ("rcnn", "fast", "faster")
METHOD_NAMES = {"rcnn": "R-CNN", "fast": "Fast R-CNN", "faster": "Faster R-CNN"}

#: The two budgets. ``quick`` fits 2 CPU cores in minutes on the built-in data (the pipeline's
#: defaults for R-CNN, 256-px inputs and short schedules for Fast/Faster); ``full`` uses the
#: papers' settings (2000 proposals, warp at the backbone's native size, 600/1000 resize, schedules
#: of the papers' length in epochs of VOC 2007 trainval: Fast 40k iterations x 2 images, Faster
#: 80k x 1 image, about 16 epochs with the step at 12). ``rcnn.warp_size`` None is the backbone's
#: native size (224; AlexNet 227).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "data": {"train": 200, "test": 50, "size": 256},
        "model": {"weights": "imagenet"},
        "proposals": {"method": "selective-search", "mode": "fast", "max_size": 256, "min_size": 16, "limit": 100,
                      "workers": None},
        "rcnn": {"warp_size": 64, "padding": 6, "batch_size": 64, "finetune": False, "finetune_epochs": 1,
                 "finetune_lr": 0.001, "C": 0.001, "bias": 10.0, "pos_weight": 2.0, "lam": 1000.0, "bbox": True},
        "fast": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
                 "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
                 "representation_size": 1024, "max_iters": None},
        "faster": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
                   "batch_size": 2, "auto_anchors": True, "anchor_sizes": None, "aspect_ratios": [0.5, 1.0, 2.0],
                   "rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000,
                   "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300, "max_iters": None},
        "detect": {"score_threshold": 0.05, "nms": 0.3, "top_k": 100},
        "timing": {"images": 6, "warmup": 1, "repeats": 3},
    },
    "full": {
        "data": {"train": 200, "test": 50, "size": 256},
        "model": {"weights": "imagenet"},
        "proposals": {"method": "selective-search", "mode": "fast", "max_size": 500, "min_size": 20, "limit": 2000,
                      "workers": None},
        "rcnn": {"warp_size": None, "padding": 16, "batch_size": 64, "finetune": True, "finetune_epochs": 2,
                 "finetune_lr": 0.001, "C": 0.001, "bias": 10.0, "pos_weight": 2.0, "lam": 1000.0, "bbox": True},
        "fast": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12], "warmup_iters": 100,
                 "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
                 "representation_size": 1024, "max_iters": None},
        "faster": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12],
                   "warmup_iters": 100, "batch_size": 2, "auto_anchors": False, "anchor_sizes": [128.0, 256.0, 512.0],
                   "aspect_ratios": [0.5, 1.0, 2.0], "rpn_pre_nms_top_n_train": 12000,
                   "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300,
                   "max_iters": None},
        "detect": {"score_threshold": 0.05, "nms": 0.3, "top_k": 100},
        "timing": {"images": 10, "warmup": 1, "repeats": 1},
    },
}


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------

def parse_methods(methods: str | Sequence[str] | None) -> list[str]:
    """``"rcnn,fast"`` -> ``["rcnn", "fast"]`` in the lecture's order; unknown names are a UserError."""
    if methods is None:
        return list(METHODS)
    items = methods.replace(" ", "").split(",") if isinstance(methods, str) else list(methods)
    items = [m.strip().lower().replace("-", "_") for m in items if m and m.strip()]
    aliases = {"r_cnn": "rcnn", "fast_rcnn": "fast", "fast_r_cnn": "fast", "faster_rcnn": "faster",
               "faster_r_cnn": "faster"}
    items = [aliases.get(m, m) for m in items]
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise UserError(f"--methods: unknown method '{bad[0]}' (choose from {', '.join(METHODS)})")
    if not items:
        raise UserError("--methods: give at least one of rcnn, fast, faster")
    return [m for m in METHODS if m in items]


def parse_set(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["fast.epochs=8", "proposals.limit=200"]`` -> ``{"fast": {"epochs": 8}, ...}`` (JSON values,
    else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. fast.epochs=8")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


def budget_settings(budget: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The settings of a budget with ``overrides`` (``{section: {key: value}}``) applied.

    Unknown budgets, sections or keys are a :class:`UserError` (a typo must not pass silently).
    """
    if budget not in BUDGETS:
        raise UserError(f"--budget: unknown budget '{budget}' (choose quick or full)")
    settings = copy.deepcopy(BUDGETS[budget])
    for section, values in (overrides or {}).items():
        if section not in settings:
            raise UserError(f"unknown settings section '{section}' (one of {', '.join(settings)})")
        for key, value in dict(values).items():
            if key not in settings[section]:
                raise UserError(f"unknown setting '{section}.{key}' (known: {', '.join(settings[section])})")
            settings[section][key] = value
    t = settings["timing"]
    if int(t["images"]) < 1 or int(t["warmup"]) < 0 or int(t["repeats"]) < 1:
        raise UserError("timing needs at least 1 image and 1 repeat, and warm-up >= 0")
    return settings


# ----------------------------------------------------------------------------------------------
# timing (shared with scripts/bench_detect.py)
# ----------------------------------------------------------------------------------------------

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


def _device_of(detector: Any) -> str:
    for obj in (detector, getattr(detector, "extractor", None)):
        dev = getattr(obj, "device", None) if obj is not None else None
        if dev is not None:
            return str(dev)
    model = getattr(detector, "model", None)
    if model is not None and hasattr(model, "parameters"):
        try:
            return str(next(model.parameters()).device)
        except StopIteration:
            pass
    return "cpu"


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


def _replace_attr(obj: Any, name: str, value: Any) -> Callable[[], None]:
    """Set an instance attribute; the returned function restores what the instance had before."""
    own = vars(obj)
    had, previous = name in own, own.get(name)
    setattr(obj, name, value)

    def restore() -> None:
        if had:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)

    return restore


@contextmanager
def count_proposals(detector: Any) -> Iterator[list[int]]:
    """Record how many proposals each call of ``detector`` scores (a list that fills up).

    Works with the three detectors of the package (R-CNN's ``propose``, Fast R-CNN's
    ``proposals_for`` capped at ``max_proposals``, the RPN of a torchvision ``FasterRCNN`` in
    ``detector.model``); other detectors leave the list empty. The detector is restored on exit.
    """
    counts: list[int] = []
    undo: list[Callable[[], None]] = []
    if callable(getattr(detector, "proposals_for", None)) and hasattr(detector, "model"):  # Fast R-CNN
        original = detector.proposals_for
        cap = int(getattr(getattr(detector.model, "config", None), "max_proposals", 0) or 0)

        def proposals_for(image, image_id):
            boxes = original(image, image_id)
            counts.append(min(len(boxes), cap) if cap else len(boxes))
            return boxes

        undo.append(_replace_attr(detector, "proposals_for", proposals_for))
    elif callable(getattr(detector, "propose", None)) and hasattr(detector, "extractor"):  # R-CNN
        original = detector.propose

        def propose(image, image_id):
            boxes = original(image, image_id)
            counts.append(len(boxes))
            return boxes

        undo.append(_replace_attr(detector, "propose", propose))
    elif hasattr(getattr(detector, "model", None), "rpn"):  # torchvision FasterRCNN (ours or plain)
        def hook(_module, _inputs, output):
            boxes = output[0] if isinstance(output, (tuple, list)) else output
            counts.extend(int(len(b)) for b in boxes)

        handle = detector.model.rpn.register_forward_hook(hook)
        undo.append(handle.remove)
    try:
        yield counts
    finally:
        for fn in undo:
            fn()


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def time_detector(detector: Callable[[Any, str], Any], images: Sequence[tuple[str, Any]], warmup: int = 1,
                  repeats: int = 1) -> dict[str, Any]:
    """Per-stage wall times of ``detector(image, image_id) -> ImageDetections`` on decoded images.

    ``images``: ``(image_id, PIL image)`` pairs (decoding is not timed). The first image is run
    ``warmup`` times first, untimed (lazy initialisation, allocator and cache warm-up). Then every
    image is run ``repeats`` times; each call gives ``total`` (wall seconds of the whole call,
    measured here) and the detector's own stages (``proposals``, ``network``, ``post``; a stage it
    does not report counts 0) and ``without_proposals`` = ``total - proposals``. Per image the median
    over repeats, then over images. Returns ``{"median": {stage: s}, "mean": {stage: s},
    "per_image": [{"image_id", stage: s, "proposals_count"}], "proposals_per_image" (median count or
    None), "images", "warmup", "repeats", "device", "device_name", "threads"}``.
    """
    if not images:
        raise UserError("no images to time")
    if warmup < 0 or repeats < 1:
        raise UserError("warm-up must be >= 0 and repeats >= 1")
    stages = ("proposals", "network", "post", "total", "without_proposals")
    per_image: list[dict[str, Any]] = []
    with count_proposals(detector) as counts:
        first_id, first = images[0]
        for _ in range(int(warmup)):
            detector(first, first_id)
        del counts[:]
        for image_id, image in images:
            runs: list[dict[str, float]] = []
            n_before = len(counts)
            for _ in range(int(repeats)):
                t0 = time.perf_counter()
                det = detector(image, image_id)
                total = time.perf_counter() - t0
                timings = dict(getattr(det, "timings", None) or {})
                row = {s: float(timings.get(s, 0.0)) for s in ("proposals", "network", "post")}
                row["total"] = total
                row["without_proposals"] = total - row["proposals"]
                runs.append(row)
            entry: dict[str, Any] = {"image_id": image_id, **{s: _median([r[s] for r in runs]) for s in stages}}
            made = counts[n_before:]
            entry["proposals_count"] = int(made[-1]) if made else None
            per_image.append(entry)
    known = [e["proposals_count"] for e in per_image if e["proposals_count"] is not None]
    device = _device_of(detector)
    return {
        "median": {s: _median([e[s] for e in per_image]) for s in stages},
        "mean": {s: float(sum(e[s] for e in per_image) / len(per_image)) for s in stages},
        "per_image": per_image,
        "proposals_per_image": _median(known) if known else None,
        "images": len(per_image), "warmup": int(warmup), "repeats": int(repeats),
        "device": device, "device_name": _device_name(device), "threads": threads_info(),
    }


def make_detector(kind: str, model_dir: str | Path, device: str = "auto", batch_size: int = 64) -> Any:
    """The detector object of ``kind`` (``rcnn``, ``fast``, ``faster``) loaded from ``model_dir``."""
    if kind == "rcnn":
        from rcnn_cli.rcnn import RCNNDetector

        return RCNNDetector(model_dir, device=device, batch_size=int(batch_size))
    if kind == "fast":
        from rcnn_cli.models.fast_rcnn import FastRCNNDetector

        return FastRCNNDetector(model_dir, device=device)
    from rcnn_cli.models.faster_rcnn import FasterRCNNDetector

    return FasterRCNNDetector(model_dir, device=device)


def _time_in_child(kind: str, model_dir: str, device: str, batch_size: int, items: list[tuple[str, str]], n: int,
                   warmup: int, repeats: int, threads: int) -> dict:
    """Run in the timing child process: load ``n`` readable images of ``items`` (``(image_id,
    path)``), build the detector, return :func:`time_detector`'s result (JSON-able)."""
    import torch
    from types import SimpleNamespace

    torch.set_num_threads(int(threads))
    dataset = SimpleNamespace(records=[SimpleNamespace(image_id=i, path=Path(p)) for i, p in items])
    images = load_timing_images(dataset, n)
    detector = make_detector(kind, model_dir, device, batch_size)
    try:
        return _jsonable(time_detector(detector, images, warmup=warmup, repeats=repeats))
    finally:
        if hasattr(detector, "close"):
            detector.close()


def load_timing_images(dataset, n: int) -> list[tuple[str, Any]]:
    """The first ``n`` readable images of a dataset split, decoded (``(image_id, PIL image)``)."""
    from rcnn_cli.data.images import load_image
    from rcnn_cli.errors import ImageError

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


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _stage_hash(run_dir: Path, name: str) -> str | None:
    from rcnn_cli.io import read_json
    from rcnn_cli.pipeline import STAGES_DIR

    path = run_dir / STAGES_DIR / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return read_json(path).get("hash")
    except UserError:
        return None


def _recall_summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("recall@0.5", "recall@0.7", "abo", "mabo", "average_recall", "boxes_per_image", "num_images",
            "num_gt", "missing_images", "method", "mode", "proposals")
    return {k: stats.get(k) for k in keep}


def _evaluate_file(det_path: Path, dataset) -> dict[str, Any]:
    from rcnn_cli.detections import read_detections
    from rcnn_cli.evaluation import evaluate, json_summary

    dets = read_detections(det_path, dataset)
    return {m: _jsonable(json_summary(evaluate(dataset, dets, metric=m))) for m in ("voc07", "voc12")}


def _train_stage(st, name: str, config: dict, run_dir: Path, train: Callable[[bool], Any]) -> Any:
    """A training stage through ``st`` (a StageRunner): an interrupted run of the same configuration
    (``stages/<name>.pending.json`` + ``run_dir/checkpoint``) resumes; anything else starts clean."""
    from rcnn_cli.engine import CHECKPOINT_DIR
    from rcnn_cli.io import read_json, write_json
    from rcnn_cli.pipeline import STAGES_DIR, config_hash

    h = config_hash(config)
    pending = st.run_dir / STAGES_DIR / f"{name}.pending.json"
    resumable = False
    if pending.is_file() and (run_dir / CHECKPOINT_DIR).is_dir():
        try:
            resumable = read_json(pending).get("hash") == h
        except UserError:
            resumable = False

    def fn() -> Any:
        write_json(pending, {"stage": name, "hash": h})
        result = train(resumable)
        pending.unlink(missing_ok=True)
        return result

    return st.run(name, config, [run_dir / "model.safetensors"], fn, clean=[] if resumable else [run_dir])


def _detect_split(detector, dataset, det_path: Path, progress: bool) -> dict[str, Any]:
    """Detect every image of ``dataset`` into ``det_path`` (JSON lines) and evaluate VOC07/VOC12."""
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import run_inference

    inputs = [ImageInput(r.image_id, r.path) for r in dataset.records]
    summary = run_inference(detector, inputs, det_path, fmt="jsonl", classes=detector.classes, progress=progress)
    return {"detect": _jsonable(summary), **_evaluate_file(det_path, dataset)}


def run_compare(dataset: str | Path | None = None, train_split: str = "trainval", test_split: str = "test",
                out: str | Path = "compare", backbone: str = "efficientnet_lite0",
                methods: str | Sequence[str] | None = None, budget: str = "quick", device: str = "auto",
                seed: int = 0, progress: bool = True, images: str | Path | None = None,
                timing_images: int | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                command: str = "rcnn compare") -> dict[str, Any]:
    """Train, evaluate and time R-CNN, Fast R-CNN and Faster R-CNN in ``out``; write the table.

    ``dataset``: a VOC root (``train_split``/``test_split``) or COCO JSON (``images``); ``None``
    generates the built-in shapes data into ``out/data``. ``budget``: ``quick`` or ``full`` (see
    :data:`BUDGETS`); ``overrides`` (``{section: {key: value}}``) change single settings and are
    recorded. ``timing_images`` overrides ``timing.images``. Returns the dict written to
    ``out/compare.json`` (also ``compare.md``, ``compare.png``, ``compare.json.config.json``).
    """
    from rcnn_cli.backbones import get_spec
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.io import write_run_record
    from rcnn_cli.pipeline import PipelineConfig, StageRunner, run_pipeline

    methods = parse_methods(methods)
    ov = {k: dict(v) for k, v in (overrides or {}).items()}
    if timing_images is not None:
        ov.setdefault("timing", {})["images"] = int(timing_images)
    settings = budget_settings(budget, ov)
    spec = get_spec(backbone)  # unknown backbone: UserError before any work
    if settings["rcnn"]["warp_size"] is None:
        settings["rcnn"]["warp_size"] = int(spec.native_size)
    from rcnn_cli.engine import resolve_device

    resolve_device(device)  # a bad --device fails now, not after an hour
    if dataset is not None and not Path(dataset).exists():
        raise UserError(f"{dataset}: dataset not found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    st = StageRunner(out, progress)
    weights = settings["model"]["weights"]
    P, R, D = settings["proposals"], settings["rcnn"], settings["detect"]

    # ---- data
    if dataset is None:
        data_dir = out / "data"
        d = settings["data"]

        def make() -> dict:
            from rcnn_cli.data.shapes import make_shapes

            make_shapes(data_dir, train=int(d["train"]), test=int(d["test"]), size=int(d["size"]), seed=seed)
            return {"path": str(data_dir)}

        st.run("data", {"generator": "shapes", **d, "seed": seed}, [data_dir], make)
        dataset_path, train_split, test_split, images = str(data_dir), "trainval", "test", None
        data_id: dict[str, Any] = {"data": st.hashes["data"]}
    else:
        dataset_path = str(dataset)
        data_id = {"dataset": str(Path(dataset_path).resolve()), "images": str(images) if images else None,
                   "train_split": train_split, "test_split": test_split}
    train_ds = load_dataset(dataset_path, train_split, images)
    test_ds = load_dataset(dataset_path, test_split, images, classes=list(train_ds.classes))
    if not train_ds.records or not test_ds.records:
        raise UserError(f"empty split: {len(train_ds.records)} training and {len(test_ds.records)} test images")

    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    rcnn_dir, fast_dir, faster_dir = out / "rcnn", out / "fast", out / "faster"
    prop_train = rcnn_dir / f"proposals_{train_split}.h5"
    prop_test = rcnn_dir / f"proposals_{test_split}.h5"

    # ---- R-CNN (also makes the proposals files Fast R-CNN reads)
    if "rcnn" in methods or "fast" in methods:
        if "rcnn" not in methods:
            logger.info("Fast R-CNN reads R-CNN's proposals files: running the R-CNN pipeline for them")
        pcfg = PipelineConfig(dataset=dataset_path, train_split=train_split, test_split=test_split,
                              images=str(images) if images else None, method=P["method"], mode=P["mode"],
                              max_size=int(P["max_size"]), min_size=int(P["min_size"]), limit=P["limit"],
                              workers=P["workers"], backbone=backbone, weights=weights,
                              warp_size=int(R["warp_size"]), padding=int(R["padding"]),
                              batch_size=int(R["batch_size"]), finetune=bool(R["finetune"]),
                              finetune_epochs=int(R["finetune_epochs"]), finetune_lr=float(R["finetune_lr"]),
                              C=float(R["C"]), bias=float(R["bias"]), pos_weight=float(R["pos_weight"]),
                              lam=float(R["lam"]), bbox=bool(R["bbox"]), score_threshold=float(D["score_threshold"]),
                              nms=float(D["nms"]), top_k=int(D["top_k"]), seed=seed, device=device)
        console.print("[bold]R-CNN[/] (rcnn pipeline)", highlight=False)
        metrics = run_pipeline(pcfg, rcnn_dir, progress=progress)
        stages = metrics["stages"]
        train_stages = [s for s in stages if s.startswith(("features-train", "finetune", "train-svm", "train-bbox"))]
        if "rcnn" in methods:
            results["rcnn"] = {
                "status": "reused" if all(v["status"] == "skipped" for v in stages.values()) else "ran",
                "run_dir": str(rcnn_dir),
                "train_seconds": float(sum(stages[s]["seconds"] for s in train_stages)),
                "train_stages": {s: stages[s]["seconds"] for s in train_stages},
                "mAP": dict(metrics["mAP"]),
            }
        train_proposals_seconds = float(stages.get("propose-train", {}).get("seconds", 0.0))
    else:
        train_proposals_seconds = None

    # ---- Fast R-CNN (same proposals files)
    if "fast" in methods:
        F = settings["fast"]
        limit = P["limit"]
        fast_cfg = {"F": F, "backbone": backbone, "weights": weights, "seed": seed, "device": device,
                    "proposals": _stage_hash(rcnn_dir, "propose-train"), "max_proposals": limit or 2000, **data_id}

        def train_fast(resume: bool) -> dict:
            from rcnn_cli.engine import TrainConfig
            from rcnn_cli.models.fast_rcnn import FastRCNNConfig, train_fast_rcnn

            tc = TrainConfig(epochs=int(F["epochs"]), lr=float(F["lr"]), lr_steps=tuple(F["lr_steps"] or ()),
                             warmup_iters=int(F["warmup_iters"]), batch_size=int(F["batch_size"]), seed=seed,
                             device=device, max_iters=F["max_iters"], progress=progress)
            mc = FastRCNNConfig(backbone=backbone, classes=list(train_ds.classes), roi_align=bool(F["roi_align"]),
                                representation_size=int(F["representation_size"]), min_size=int(F["min_size"]),
                                max_size=int(F["max_size"]), rois_per_image=int(F["rois_per_image"]),
                                fg_fraction=float(F["fg_fraction"]), max_proposals=int(limit or 2000),
                                score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                                detections_per_img=int(D["top_k"]))
            summary = train_fast_rcnn(train_ds, fast_dir, tc, mc, prop_train, weights=weights, resume=resume,
                                      command=f"{command} (fast)")
            return _jsonable({k: v for k, v in summary.items() if k != "history"})

        console.print("[bold]Fast R-CNN[/]", highlight=False)
        _train_stage(st, "fast-train", fast_cfg, fast_dir, train_fast)
        det_path = fast_dir / f"detections_{test_split}.jsonl"

        def eval_fast() -> dict:
            from rcnn_cli.models.fast_rcnn import FastRCNNDetector

            detector = FastRCNNDetector(fast_dir, device=device, proposals=prop_test)
            try:
                return _detect_split(detector, test_ds, det_path, progress)
            finally:
                detector.close()

        ev = st.run("fast-eval", {"train": st.hashes["fast-train"], "proposals": _stage_hash(rcnn_dir, "propose-test"),
                                  "split": test_split}, [det_path], eval_fast, clean=[det_path])
        results["fast"] = {"status": _status(st, ("fast-train", "fast-eval")), "run_dir": str(fast_dir),
                           "train_seconds": float(st.timings["fast-train"]["seconds"]),
                           "mAP": {m: ev[m]["mAP"] for m in ("voc07", "voc12")}}

    # ---- Faster R-CNN
    if "faster" in methods:
        G = settings["faster"]
        faster_cfg = {"G": G, "backbone": backbone, "weights": weights, "seed": seed, "device": device,
                      "train_split": train_split, **data_id}
        head = "backbone" if backbone in ("vgg16", "alexnet") else "mlp"

        def train_fr(resume: bool) -> dict:
            from rcnn_cli.engine import TrainConfig
            from rcnn_cli.models.faster_rcnn import train_faster

            tc = TrainConfig(epochs=int(G["epochs"]), lr=float(G["lr"]), lr_steps=tuple(G["lr_steps"] or ()),
                             warmup_iters=int(G["warmup_iters"]), batch_size=int(G["batch_size"]), seed=seed,
                             device=device, max_iters=G["max_iters"], progress=progress)
            overrides_ = {k: G[k] for k in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                                            "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")}
            overrides_.update(box_score_thresh=float(D["score_threshold"]), box_nms_thresh=float(D["nms"]),
                              box_detections_per_img=int(D["top_k"]))
            summary = train_faster(dataset_path, train_split, faster_dir, tc, images=images, backbone=backbone,
                                   weights=weights, head=head, anchor_sizes=G["anchor_sizes"],
                                   aspect_ratios=G["aspect_ratios"], auto_anchors=bool(G["auto_anchors"]),
                                   min_size=int(G["min_size"]), max_size=int(G["max_size"]), resume=resume,
                                   model_overrides=overrides_, command=f"{command} (faster)")
            return _jsonable({k: v for k, v in summary.items() if k != "history"})

        console.print("[bold]Faster R-CNN[/]", highlight=False)
        _train_stage(st, "faster-train", faster_cfg, faster_dir, train_fr)
        det_path = faster_dir / f"detections_{test_split}.jsonl"

        def eval_faster() -> dict:
            from rcnn_cli.models.faster_rcnn import FasterRCNNDetector

            return _detect_split(FasterRCNNDetector(faster_dir, device=device), test_ds, det_path, progress)

        ev = st.run("faster-eval", {"train": st.hashes["faster-train"], "split": test_split}, [det_path],
                    eval_faster, clean=[det_path])
        rpn_file = faster_dir / f"proposals_{test_split}_rpn.h5"
        top_n = int(G["rpn_post_nms_top_n_test"])

        def rpn_recall() -> dict:
            from rcnn_cli.data.inputs import ImageInput
            from rcnn_cli.models.faster_rcnn import rpn_attrs, rpn_proposer
            from rcnn_cli.proposals import recall_stats, run_propose

            proposer = rpn_proposer(faster_dir, device=device, post_nms_top_n=top_n)
            run_propose([ImageInput(r.image_id, r.path) for r in test_ds.records], rpn_file, min_size=0,
                        proposer=proposer, attrs=rpn_attrs(faster_dir, top_n), progress=progress,
                        command=f"{command} (RPN proposals)")
            return _recall_summary(recall_stats(test_ds, rpn_file))

        rec = st.run("faster-recall", {"train": st.hashes["faster-train"], "split": test_split, "top_n": top_n},
                     [rpn_file], rpn_recall, clean=[rpn_file, rpn_file.with_name(rpn_file.name + ".config.json")])
        results["faster"] = {"status": _status(st, ("faster-train", "faster-eval", "faster-recall")),
                             "run_dir": str(faster_dir), "train_seconds": float(st.timings["faster-train"]["seconds"]),
                             "mAP": {m: ev[m]["mAP"] for m in ("voc07", "voc12")}, "recall": rec}

    # ---- selective-search recall (R-CNN and Fast R-CNN share it)
    if "rcnn" in methods or "fast" in methods:
        def ss_recall() -> dict:
            from rcnn_cli.proposals import recall_stats

            return _recall_summary(recall_stats(test_ds, prop_test))

        ss = st.run("ss-recall", {"proposals": _stage_hash(rcnn_dir, "propose-test"), "split": test_split},
                    [prop_test], ss_recall, clean=[])
        for m in ("rcnn", "fast"):
            if m in methods:
                results[m]["recall"] = ss

    # ---- timing: after all training, one method after the other, same images
    T = settings["timing"]
    timing_ids = [r.image_id for r in test_ds.records[: int(T["images"])]]
    timing_base = {"images": timing_ids, "warmup": int(T["warmup"]), "repeats": int(T["repeats"]), "device": device,
                   "threads": threads_info()}
    items = [(r.image_id, str(r.path)) for r in test_ds.records]
    # One fresh child times every method, one after the other (as scripts/bench_detect.py does).
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        def timed(kind: str, model_hash: Any, model_dir: Path) -> dict:
            def fn() -> dict:
                return child.submit(_time_in_child, kind, str(model_dir), str(device), int(R["batch_size"]), items,
                                    int(T["images"]), int(T["warmup"]), int(T["repeats"]),
                                    int(timing_base["threads"]["torch"])).result()

            return st.run(f"timing-{kind}", dict(timing_base, model=model_hash), [], fn)

        console.print(f"[bold]timing[/] on {len(timing_ids)} test images (+{T['warmup']} warm-up), "
                      "in a fresh process", highlight=False)
        if "rcnn" in methods:
            h = [_stage_hash(rcnn_dir, s) for s in ("train-svm", "train-bbox")]
            results["rcnn"]["timing"] = timed("rcnn", h, rcnn_dir / "model")
        if "fast" in methods:
            results["fast"]["timing"] = timed("fast", st.hashes["fast-train"], fast_dir)
        if "faster" in methods:
            results["faster"]["timing"] = timed("faster", st.hashes["faster-train"], faster_dir)

    # ---- table
    inputs_text = {
        "rcnn": f"warp {R['warp_size']}x{R['warp_size']}+{R['padding']}",
        "fast": _resize_text(settings["fast"]) if "fast" in methods else "",
        "faster": _resize_text(settings["faster"]) if "faster" in methods else "",
    }
    ss_text = f"SS {P['mode']} @{P['max_size']}px"
    for m in methods:
        r = results[m]
        tm = r["timing"]["median"]
        r["test_seconds_per_image"] = {"without_proposals": tm["without_proposals"], "with_proposals": tm["total"],
                                       "proposals": tm["proposals"], "network": tm["network"], "post": tm["post"]}
        r["proposals_per_image"] = r["timing"].get("proposals_per_image")
        r["proposal_source"] = f"RPN top {settings['faster']['rpn_post_nms_top_n_test']}" if m == "faster" else ss_text
        r["input"] = inputs_text[m]
        if m == "faster":  # the RPN runs inside the network: no separate proposal stage
            r["test_seconds_per_image"]["proposals"] = None
        if m == "fast":
            r["train_proposals_seconds"] = train_proposals_seconds
        if m == "rcnn":
            r["train_proposals_seconds"] = train_proposals_seconds
    for key in ("without_proposals", "with_proposals"):
        sp = speedups({m: results[m]["test_seconds_per_image"][key] for m in methods})
        for m in methods:
            results[m].setdefault("speedup", {})[key] = sp[m] if "rcnn" in methods else None

    first_timing = results[methods[0]]["timing"]
    report = {
        "command": command, "dataset": dataset_path, "train_split": train_split, "test_split": test_split,
        "budget": budget, "backbone": backbone, "methods": methods, "seed": seed,
        "device": first_timing["device"], "device_name": first_timing["device_name"],
        "threads": first_timing["threads"], "settings": settings, "overrides": _jsonable(ov),
        "train_images": len(train_ds.records), "test_images": len(test_ds.records),
        "timing": {"images": len(first_timing["per_image"]), "warmup": int(T["warmup"]), "repeats": int(T["repeats"]),
                   "image_ids": [e["image_id"] for e in first_timing["per_image"]]},
        "results": _jsonable(results),
        "rows": table_rows(results, methods),
        "stages": st.timings,
        "total_seconds": time.perf_counter() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    from rcnn_cli.io import atomic_open, write_json

    write_json(out / "compare.json", report)
    with atomic_open(out / "compare.md") as f:
        f.write(markdown(report))
    try:
        plot_compare(report, out / "compare.png")
    except Exception as e:  # noqa: BLE001 - a figure problem must not lose the measured table
        logger.warning("compare.png not written: %s", e)
    write_run_record(out / "compare.json", command, {
        "dataset": dataset_path, "train_split": train_split, "test_split": test_split, "backbone": backbone,
        "methods": methods, "budget": budget, "device": device, "seed": seed, "settings": settings,
        "overrides": _jsonable(ov), "stage_hashes": st.hashes})
    return report


def _status(st, names: Sequence[str]) -> str:
    return "reused" if all(st.timings[n]["status"] == "skipped" for n in names) else "ran"


def _resize_text(s: Mapping[str, Any], short: bool = True) -> str:
    if short:
        return f"{s['min_size']}/{s['max_size']} px"
    return f"shorter side {s['min_size']}, longer <= {s['max_size']}"


# ----------------------------------------------------------------------------------------------
# output: rows, markdown, rich, figure
# ----------------------------------------------------------------------------------------------

def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{1000 * s:.0f} ms" if s >= 0.01 else f"{1000 * s:.1f} ms"


def _fmt_x(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"


def _fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def table_rows(results: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The lecture's rows: ``[{"row", "key", "unit", "values": {method: number}, "text": {method: str}}]``."""
    def get(m: str, *path: str) -> Any:
        v: Any = results[m]
        for p in path:
            if not isinstance(v, Mapping) or p not in v:
                return None
            v = v[p]
        return v

    specs = [
        ("training time", "train_seconds", "s", ("train_seconds",), _fmt_seconds),
        ("test time / image (without proposals)", "test_without_proposals", "s",
         ("test_seconds_per_image", "without_proposals"), _fmt_seconds),
        ("test time / image (with proposals)", "test_with_proposals", "s",
         ("test_seconds_per_image", "with_proposals"), _fmt_seconds),
        ("speedup vs R-CNN (without proposals)", "speedup_without_proposals", "x",
         ("speedup", "without_proposals"), _fmt_x),
        ("speedup vs R-CNN (with proposals)", "speedup_with_proposals", "x", ("speedup", "with_proposals"), _fmt_x),
        ("mAP@0.5 VOC07 (%)", "map_voc07", "fraction", ("mAP", "voc07"), _fmt_pct),
        ("mAP@0.5 VOC12 (%)", "map_voc12", "fraction", ("mAP", "voc12"), _fmt_pct),
        ("proposal recall@0.5 (%)", "recall_0.5", "fraction", ("recall", "recall@0.5"), _fmt_pct),
        ("proposal recall@0.7 (%)", "recall_0.7", "fraction", ("recall", "recall@0.7"), _fmt_pct),
        ("proposal time / image", "proposal_seconds", "s", ("test_seconds_per_image", "proposals"),
         lambda v: "in network" if v is None else _fmt_seconds(v)),
        ("proposals / image (timed)", "proposals_per_image", "count", ("proposals_per_image",),
         lambda v: "—" if v is None else f"{v:.0f}"),
        ("proposal source", "proposal_source", "text", ("proposal_source",), lambda v: v or "—"),
        ("network input", "input", "text", ("input",), lambda v: v or "—"),
    ]
    rows = []
    for label, key, unit, path, fmt in specs:
        values = {m: get(m, *path) for m in methods}
        rows.append({"row": label, "key": key, "unit": unit, "values": values,
                     "text": {m: fmt(values[m]) for m in methods}})
    return rows


def _settings_lines(report: Mapping[str, Any]) -> list[str]:
    s, methods = report["settings"], report["methods"]
    P, R = s["proposals"], s["rcnn"]
    lim = P["limit"] if P["limit"] else "all"
    lines = [f"- data: `{report['dataset']}` ({report['train_split']} {report['train_images']} images -> "
             f"{report['test_split']} {report['test_images']} images); backbone `{report['backbone']}` "
             f"({s['model']['weights']} weights); seed {report['seed']}"]
    if "rcnn" in methods or "fast" in methods:
        lines.append(f"- proposals (R-CNN and Fast R-CNN, the same files): {P['method']} {P['mode']}, image resized "
                     f"to max side {P['max_size']}, boxes >= {P['min_size']} px, top {lim} per image")
    if "rcnn" in methods:
        ft = (f"fine-tuned ({R['finetune_epochs']} epochs, lr {R['finetune_lr']})" if R["finetune"]
              else "no fine-tuning")
        lines.append(f"- R-CNN: warp {R['warp_size']}x{R['warp_size']} with {R['padding']} px context, "
                     f"{ft}, "
                     f"SVM C {R['C']} bias {R['bias']} pos-weight {R['pos_weight']}, "
                     f"{'bbox regression lambda ' + str(R['lam']) if R['bbox'] else 'no bbox regression'}")
    for m, key in (("fast", "fast"), ("faster", "faster")):
        if m not in methods:
            continue
        F = s[key]
        sched = f"{F['epochs']} epochs, lr {F['lr']} (x0.1 at epochs {F['lr_steps']}), batch {F['batch_size']}"
        if F.get("max_iters"):
            sched += f", at most {F['max_iters']} iterations"
        extra = (f"{F['rois_per_image']} RoIs/image, {'RoIAlign' if F['roi_align'] else 'RoI max pooling'} 7x7"
                 if m == "fast" else
                 f"anchors {'fitted to the training boxes' if F['auto_anchors'] else F['anchor_sizes']} x ratios "
                 f"{F['aspect_ratios']}, RPN top-N {F['rpn_pre_nms_top_n_train']}/{F['rpn_post_nms_top_n_train']} "
                 f"train, {F['rpn_pre_nms_top_n_test']}/{F['rpn_post_nms_top_n_test']} test")
        lines.append(f"- {METHOD_NAMES[m]}: {_resize_text(F, short=False)}; {sched}; {extra}")
    d = s["detect"]
    lines.append("- network input: R-CNN warps each region to WxW with P pixels of image context (WxW+P); Fast and "
                 "Faster R-CNN resize the whole image to shorter side/longer side at most (S/L px)")
    lines.append(f"- detection (all): score >= {d['score_threshold']}, per-class NMS {d['nms']}, top {d['top_k']}")
    t = report["timing"]
    th = report["threads"]
    lines.append(f"- timing (in a fresh process, after all training): median over {t['images']} test images "
                 f"({t['repeats']} run(s) each) after {t['warmup']} warm-up call(s); images decoded beforehand; "
                 f"selective search live with the training settings; device {report['device_name']}; "
                 f"torch threads {th.get('torch')} (inter-op {th.get('torch_interop')}), "
                 f"OpenCV threads {th.get('opencv')}")
    lines.append("- training time: wall time of the training stages (R-CNN: feature extraction of the training "
                 "proposals, fine-tuning, SVMs, box regressors; Fast/Faster: the training loop with model building); "
                 "the selective search of the training images is not included (R-CNN and Fast R-CNN share it: "
                 f"{_fmt_seconds(_shared_proposal_seconds(report))})")
    if report.get("overrides"):
        lines.append(f"- overridden settings: `{json.dumps(report['overrides'], sort_keys=True)}`")
    return lines


def _shared_proposal_seconds(report: Mapping[str, Any]) -> float | None:
    for m in ("rcnn", "fast"):
        v = report["results"].get(m, {}).get("train_proposals_seconds")
        if v is not None:
            return float(v)
    return None


def markdown(report: Mapping[str, Any]) -> str:
    """``compare.md``: the table, then every setting behind it."""
    methods = report["methods"]
    head = "| | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |"
    sep = "|---|" + "|".join("---:" for _ in methods) + "|"
    lines = [f"# R-CNN vs Fast R-CNN vs Faster R-CNN ({report['budget']} budget)", "", head, sep]
    for row in report["rows"]:
        cells = [row["row"]] + [row["text"][m] for m in methods]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Settings", ""] + _settings_lines(report)
    st = ", ".join(f"{METHOD_NAMES[m]} {report['results'][m].get('status', '')}" for m in methods)
    lines += ["", f"Status of this run: {st}; total {_fmt_seconds(report['total_seconds'])} "
                  f"(reused stages count their recorded time in the table, not here).", ""]
    return "\n".join(lines)


def print_table(report: Mapping[str, Any]) -> None:
    """Print the table (rich, stderr) and the settings below it."""
    from rich.table import Table

    methods = report["methods"]
    t = Table(title=f"R-CNN vs Fast R-CNN vs Faster R-CNN ({report['budget']} budget, {report['backbone']})",
              title_justify="left",
              caption=f"{report['device_name']}; torch threads {report['threads'].get('torch')}; median of "
                      f"{report['timing']['images']} test images",
              caption_justify="left")
    t.add_column("", no_wrap=True)
    for m in methods:
        t.add_column(METHOD_NAMES[m], justify="right")
    for row in report["rows"]:
        if row["key"] in ("map_voc07", "recall_0.5", "proposals_per_image"):
            t.add_section()
        t.add_row(row["row"], *[row["text"][m] for m in methods])
    console.print(t)
    for line in _settings_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def plot_compare(report: Mapping[str, Any], out_png: str | Path) -> Path:
    """``compare.png``: time per image (log axis; with and without proposals) beside mAP (VOC07/VOC12),
    one bar group per method."""
    import numpy as np

    from rcnn_cli.visualize import PALETTE, _pyplot, _savefig

    plt = _pyplot()
    methods = report["methods"]
    res = report["results"]
    names = [METHOD_NAMES[m] for m in methods]
    x = np.arange(len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = [np.asarray(c) / 255.0 for c in PALETTE]
    try:
        width = 0.38
        series = [("with proposals", "with_proposals", colors[0]), ("without proposals", "without_proposals", colors[10])]
        for i, (label, key, color) in enumerate(series):
            vals = np.asarray([res[m]["test_seconds_per_image"][key] for m in methods], np.float64)
            bars = ax1.bar(x + (i - 0.5) * width, vals, width, label=label, color=color)
            for b, v in zip(bars, vals):
                ax1.annotate(_fmt_seconds(float(v)), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax1.set_yscale("log")
        allv = [res[m]["test_seconds_per_image"][k] for m in methods for k in ("with_proposals", "without_proposals")]
        allv = [v for v in allv if v and v > 0]
        if allv:
            ax1.set_ylim(10 ** np.floor(np.log10(min(allv)) - 0.3), 10 ** np.ceil(np.log10(max(allv)) + 0.3))
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax1.yaxis.set_major_locator(LogLocator(base=10))
        ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_seconds(float(v))))
        labels = []
        for m in methods:
            sp = res[m].get("speedup", {})
            if m != "rcnn" and sp.get("with_proposals"):
                labels.append(f"{METHOD_NAMES[m]}\n{_fmt_x(sp['with_proposals'])} faster\n"
                              f"({_fmt_x(sp.get('without_proposals'))} w/o proposals)")
            else:
                labels.append(METHOD_NAMES[m])
        ax1.set_xticks(x, labels, fontsize=8.5)
        ax1.set_ylabel("test time per image (log scale)")
        ax1.set_title("test time per image (median)")
        ax1.grid(True, axis="y", which="both", alpha=0.3)
        ax1.legend(loc="upper right", fontsize="small")
        for i, (metric, color) in enumerate((("voc07", colors[2]), ("voc12", colors[12]))):
            vals = np.asarray([100 * (res[m]["mAP"][metric] or 0.0) for m in methods], np.float64)
            bars = ax2.bar(x + (i - 0.5) * width, vals, width, label=f"mAP@0.5 {metric.upper()}", color=color)
            for b, v in zip(bars, vals):
                ax2.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8,
                             xytext=(0, 2), textcoords="offset points")
        ax2.set_ylim(0, 115)
        ax2.set_xticks(x, names, fontsize=8.5)
        ax2.set_ylabel("mAP@0.5 (%)")
        ax2.set_title("accuracy on the test split")
        ax2.grid(True, axis="y", alpha=0.3)
        ax2.legend(loc="upper center", fontsize="small", ncol=2)
        th = report["threads"]
        fig.suptitle(f"{report['backbone']}, {report['budget']} budget, {report['device_name']}, "
                     f"{th.get('torch')} torch threads", fontsize=10)
        return _savefig(fig, out_png)
    finally:
        plt.close(fig)
