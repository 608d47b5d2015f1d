"""``rcnn compare``: the lecture's table, measured here: Overfeat (the dense sliding window), HOG + SVM
(the pre-CNN baseline), R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1.

The detectors are trained and evaluated with the same backbone (HOG has none), the same data and,
for HOG + SVM, R-CNN and Fast R-CNN, the same proposals files, all inside one folder ``OUT``:

==============  ==============================================  ===========================================
path            what                                            made by
==============  ==============================================  ===========================================
``data/``       built-in shapes data (when no DATASET)          :func:`rcnn_cli.data.shapes.make_shapes`
``rcnn/``       the whole R-CNN pipeline (its stages resume)    :func:`rcnn_cli.workflows.pipeline.run_pipeline`
``rcnn/proposals_<split>.h5``  selective search, shared by R-CNN and Fast R-CNN
``fast/``       Fast R-CNN run dir + test detections            :func:`rcnn_cli.models.fast_rcnn.train_fast_rcnn`
``faster/``     Faster R-CNN run dir, detections, RPN proposals :func:`rcnn_cli.models.faster_rcnn.train_faster`
``yolo/``       YOLO v1 run dir + test detections               :func:`rcnn_cli.models.yolo.train_yolo`
``overfeat/``   Overfeat run dir + test detections              :func:`rcnn_cli.models.overfeat.train_overfeat`
``hog/``        the R-CNN pipeline on HOG features (R-CNN's proposals)  :func:`rcnn_cli.workflows.pipeline.run_pipeline`
``stages/``     compare's own stage records (config hashes)      :class:`rcnn_cli.workflows.pipeline.StageRunner`
``compare.json`` / ``compare.md`` / ``compare.png``  the table, its settings, the figure
==============  ==============================================  ===========================================

Every stage is skipped on a rerun when its recorded configuration hash matches (the pipeline's
:class:`~rcnn_cli.workflows.pipeline.StageRunner`); an interrupted Fast/Faster training of the same
configuration resumes from its checkpoint.

Timing: :mod:`rcnn_cli.workflows.timing` (the one inference loop, in a fresh child process after all
training); the report: :mod:`rcnn_cli.workflows.report`.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rcnn_cli.detector import DetectConfig
from rcnn_cli.rcnn.classifiers import PAPER_LAMBDA, SVMConfig
from rcnn_cli.errors import UserError
from rcnn_cli.io.files import jsonable
from rcnn_cli.log import console, logger
from rcnn_cli.workflows.report import (METHOD_NAMES, map_interval, markdown, plot_compare, print_table, resize_text,
                                       table_rows)
from rcnn_cli.workflows.timing import speedups, threads_info, time_in_child

__all__ = ["METHODS", "BUDGETS", "METHOD_NAMES", "budget_settings", "run_compare", "print_table", "parse_methods",
           "parse_set"]

METHODS = ("overfeat", "hog", "rcnn", "fast", "faster", "yolo")  # the lecture's order

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
                 "finetune_lr": 0.001, "C": SVMConfig.C, "bias": SVMConfig.bias, "pos_weight": SVMConfig.pos_weight,
                 "lam": PAPER_LAMBDA, "bbox": True},
        "fast": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
                 "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
                 "representation_size": 1024, "max_iters": None},
        "faster": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
                   "batch_size": 2, "auto_anchors": True, "anchor_sizes": None, "aspect_ratios": [0.5, 1.0, 2.0],
                   "rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000,
                   "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300, "max_iters": None},
        "yolo": {"input_size": 224, "grid": 7, "boxes_per_cell": 2, "epochs": 15, "lr": 0.005, "lr_steps": [12],
                 "warmup_iters": 50, "batch_size": 8, "max_iters": None},
        "hog": {"warp_size": 64, "padding": 6},
        "overfeat": {"input_size": 224, "offsets": [0], "merge": "greedy", "epochs": 6, "lr": 0.002, "lr_steps": [5],
                     "warmup_iters": 20, "batch_size": 4, "max_iters": None},
        "detect": DetectConfig().to_dict(),
        "timing": {"images": 6, "warmup": 1, "repeats": 3},
    },
    "full": {
        "data": {"train": 200, "test": 50, "size": 256},
        "model": {"weights": "imagenet"},
        "proposals": {"method": "selective-search", "mode": "fast", "max_size": 500, "min_size": 20, "limit": 2000,
                      "workers": None},
        "rcnn": {"warp_size": None, "padding": 16, "batch_size": 64, "finetune": True, "finetune_epochs": 2,
                 "finetune_lr": 0.001, "C": SVMConfig.C, "bias": SVMConfig.bias, "pos_weight": SVMConfig.pos_weight,
                 "lam": PAPER_LAMBDA, "bbox": True},
        "fast": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12], "warmup_iters": 100,
                 "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
                 "representation_size": 1024, "max_iters": None},
        "faster": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12],
                   "warmup_iters": 100, "batch_size": 2, "auto_anchors": False, "anchor_sizes": [128.0, 256.0, 512.0],
                   "aspect_ratios": [0.5, 1.0, 2.0], "rpn_pre_nms_top_n_train": 12000,
                   "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300,
                   "max_iters": None},
        "yolo": {"input_size": 448, "grid": 7, "boxes_per_cell": 2, "epochs": 60, "lr": 0.005, "lr_steps": [40, 52],
                 "warmup_iters": 100, "batch_size": 8, "max_iters": None},
        "hog": {"warp_size": 64, "padding": 16},
        "overfeat": {"input_size": 224, "offsets": [0, 16], "merge": "greedy", "epochs": 16, "lr": 0.002,
                     "lr_steps": [12], "warmup_iters": 50, "batch_size": 4, "max_iters": None},
        "detect": DetectConfig().to_dict(),
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
               "faster_r_cnn": "faster", "yolo_v1": "yolo", "yolov1": "yolo", "hog_svm": "hog"}
    items = [aliases.get(m, m) for m in items]
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise UserError(f"--methods: unknown method '{bad[0]}' (choose from {', '.join(METHODS)})")
    if not items:
        raise UserError(f"--methods: give at least one of {', '.join(METHODS)}")
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

# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def _stage_hash(run_dir: Path, name: str) -> str | None:
    from rcnn_cli.io import read_json
    from rcnn_cli.workflows.pipeline import STAGES_DIR

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


def _train_stage(st, name: str, config: dict, run_dir: Path, train: Callable[[bool], Any]) -> Any:
    """A training stage through ``st`` (a StageRunner): an interrupted run of the same configuration
    (``stages/<name>.pending.json`` + ``run_dir/checkpoint``) resumes; anything else starts clean."""
    from rcnn_cli.engine import CHECKPOINT_DIR
    from rcnn_cli.io import read_json, write_json
    from rcnn_cli.workflows.pipeline import STAGES_DIR, config_hash

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


def _train_and_evaluate(c: "_Compare", name: str, config: dict, run_dir: Path, train: Callable[[bool], Any],
                        load: Callable[[], Any], eval_extra: dict | None = None) -> dict[str, Any]:
    """Stages ``<name>-train`` (resumable) and ``<name>-eval`` (detect the test split with ``load()``'s
    detector, VOC07/VOC12); returns the method's result row data."""
    st, d = c.st, c.data
    _train_stage(st, f"{name}-train", config, run_dir, train)
    det_path = run_dir / f"detections_{d.test_split}.jsonl"
    ev = st.run(f"{name}-eval", {"train": st.hashes[f"{name}-train"], **(eval_extra or {}), "split": d.test_split},
                [det_path], lambda: _detect_split(load(), d.test_ds, det_path, c.progress), clean=[det_path])
    return {"status": _status(st, (f"{name}-train", f"{name}-eval")), "run_dir": str(run_dir),
            "train_seconds": float(st.timings[f"{name}-train"]["seconds"]),
            "mAP": {m: ev[m]["mAP"] for m in ("voc07", "voc12")}, "mAP_interval": map_interval(ev["voc12"])}


def _detect_split(detector, dataset, det_path: Path, progress: bool) -> dict[str, Any]:
    """Detect every image of ``dataset`` into ``det_path`` (JSON lines) and evaluate VOC07/VOC12."""
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import run_inference
    from rcnn_cli.workflows.pipeline import evaluate_file

    with detector:
        inputs = [ImageInput(r.image_id, r.path) for r in dataset.records]
        summary = run_inference(detector, inputs, det_path, fmt="jsonl", classes=detector.classes, progress=progress)
    summary.pop("per_image", None)
    return {"detect": jsonable(summary), **evaluate_file(det_path, dataset)}


@dataclass
class _Compare:
    """What the steps of :func:`run_compare` share."""

    out: Path
    settings: dict[str, Any]
    methods: list[str]
    backbone: str
    device: str
    seed: int
    progress: bool
    command: str
    runtime: str = "torch"
    st: Any = None
    data: Any = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_proposals_seconds: float | None = None

    @property
    def rcnn_dir(self) -> Path:
        return self.out / "rcnn"

    def proposals_file(self, split: str) -> Path:
        return self.rcnn_dir / f"proposals_{split}.h5"

    def train_config(self, s: Mapping[str, Any]):
        from rcnn_cli.engine import TrainConfig

        return TrainConfig(epochs=int(s["epochs"]), lr=float(s["lr"]), lr_steps=tuple(s["lr_steps"] or ()),
                           warmup_iters=int(s["warmup_iters"]), batch_size=int(s["batch_size"]), seed=self.seed,
                           device=self.device, max_iters=s["max_iters"], progress=self.progress)


def _pipeline_config(c: _Compare, out_dir: Path, backbone: str, R: Mapping[str, Any]):
    from rcnn_cli.workflows.pipeline import PipelineConfig

    P, D, d = c.settings["proposals"], c.settings["detect"], c.data
    return PipelineConfig(dataset=d.path, train_split=d.train_split, test_split=d.test_split, images=d.images,
                          method=P["method"], mode=P["mode"], max_size=int(P["max_size"]), min_size=int(P["min_size"]),
                          limit=P["limit"] or 0, workers=P["workers"], backbone=backbone,
                          weights=c.settings["model"]["weights"], warp_size=int(R["warp_size"]),
                          padding=int(R["padding"]), batch_size=int(R["batch_size"]), finetune=bool(R["finetune"]),
                          finetune_epochs=int(R["finetune_epochs"]), finetune_lr=float(R["finetune_lr"]),
                          C=float(R["C"]), bias=float(R["bias"]), pos_weight=float(R["pos_weight"]),
                          lam=float(R["lam"]), bbox=bool(R["bbox"]), score_threshold=float(D["score_threshold"]),
                          nms=float(D["nms"]), top_k=int(D["top_k"]), seed=c.seed, device=c.device, fit=False)


def _pipeline_result(metrics: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A pipeline run's row data: status, training seconds (its training stages), mAP."""
    stages = metrics["stages"]
    train_stages = [s for s in stages if s.startswith(("features-train", "finetune", "train-svm", "train-bbox"))]
    return {"status": "reused" if all(v["status"] == "skipped" for v in stages.values()) else "ran",
            "run_dir": str(run_dir), "train_seconds": float(sum(stages[s]["seconds"] for s in train_stages)),
            "train_stages": {s: stages[s]["seconds"] for s in train_stages}, "mAP": dict(metrics["mAP"]),
            "mAP_interval": map_interval(metrics["voc12"])}


def _rcnn_step(c: _Compare) -> None:
    """The whole R-CNN pipeline (it also makes the proposals files Fast R-CNN and HOG + SVM read)."""
    from rcnn_cli.workflows.pipeline import run_pipeline

    if "rcnn" not in c.methods:
        logger.info("Fast R-CNN and HOG + SVM read R-CNN's proposals files: running the R-CNN pipeline for them")
    console.print("[bold]R-CNN[/] (rcnn pipeline)", highlight=False)
    metrics = run_pipeline(_pipeline_config(c, c.rcnn_dir, c.backbone, c.settings["rcnn"]), c.rcnn_dir,
                           progress=c.progress)
    if "rcnn" in c.methods:
        c.results["rcnn"] = _pipeline_result(metrics, c.rcnn_dir)
    c.train_proposals_seconds = float(metrics["stages"].get("propose-train", {}).get("seconds", 0.0))


def _hog_step(c: _Compare) -> None:
    """The same R-CNN chain (R-CNN's proposals, SVMs with hard negatives, box regression) on HOG features."""
    import shutil

    from rcnn_cli.workflows.pipeline import STAGES_DIR, run_pipeline

    hog_dir = c.out / "hog"
    (hog_dir / STAGES_DIR).mkdir(parents=True, exist_ok=True)
    for split in (c.data.train_split, c.data.test_split):  # R-CNN's proposals, taken as they are
        for name in (f"proposals_{split}.h5", f"proposals_{split}.h5.config.json"):
            src, dst = c.rcnn_dir / name, hog_dir / name
            if src.is_file() and (not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime):
                shutil.copy2(src, dst)
    for tag in ("propose-train", "propose-test"):
        shutil.copy2(c.rcnn_dir / STAGES_DIR / f"{tag}.json", hog_dir / STAGES_DIR / f"{tag}.json")
    R = dict(c.settings["rcnn"], **c.settings["hog"], finetune=False)
    console.print("[bold]HOG + SVM[/] (rcnn pipeline --backbone hog)", highlight=False)
    c.results["hog"] = _pipeline_result(run_pipeline(_pipeline_config(c, hog_dir, "hog", R), hog_dir,
                                                     progress=c.progress), hog_dir)


def _yolo_step(c: _Compare) -> None:
    """YOLO v1: training and detection (no proposals)."""
    from rcnn_cli.models.yolo import YOLODetector, train_yolo

    Y, D, d = c.settings["yolo"], c.settings["detect"], c.data
    yolo_dir = c.out / "yolo"
    yolo_cfg = {"Y": Y, "D": D, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
                "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        model = {k: Y[k] for k in ("input_size", "grid", "boxes_per_cell")}
        model.update(backbone=c.backbone, score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                     detections_per_img=int(D["top_k"]))
        summary = train_yolo(d.path, d.train_split, yolo_dir, c.train_config(Y), images=d.images,
                             model_overrides=model, weights=c.settings["model"]["weights"], resume=resume,
                             command=f"{c.command} (yolo)")
        return jsonable({k: v for k, v in summary.items() if k != "history"})

    console.print("[bold]YOLO v1[/]", highlight=False)
    c.results["yolo"] = _train_and_evaluate(c, "yolo", yolo_cfg, yolo_dir, train,
                                            lambda: YOLODetector.from_run(yolo_dir, device=c.device))


def _overfeat_step(c: _Compare) -> None:
    """Overfeat: window training, dense detection over scales chosen from the training boxes (no proposals)."""
    from rcnn_cli.models.overfeat import OverfeatDetector, train_overfeat

    V, D, d = c.settings["overfeat"], c.settings["detect"], c.data
    run_dir = c.out / "overfeat"
    config = {"V": V, "D": D, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
              "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        model = {k: V[k] for k in ("input_size", "offsets", "merge")}
        summary = train_overfeat(d.path, d.train_split, run_dir, c.train_config(V), images=d.images,
                                 model_overrides=dict(model, backbone=c.backbone),
                                 weights=c.settings["model"]["weights"], resume=resume,
                                 command=f"{c.command} (overfeat)")
        return jsonable({k: v for k, v in summary.items() if k != "history"})

    console.print("[bold]Overfeat[/]", highlight=False)
    c.results["overfeat"] = _train_and_evaluate(
        c, "overfeat", config, run_dir, train,
        lambda: OverfeatDetector.from_run(run_dir, device=c.device, config=DetectConfig(**D)))
    c.results["overfeat"]["scales"] = json.loads((run_dir / "config.json").read_text())["model"]["scales"]


def _fast_step(c: _Compare) -> None:
    """Fast R-CNN on the same proposals files."""
    from rcnn_cli.models.fast_rcnn import FastRCNNConfig, FastRCNNDetector, train_fast_rcnn

    F, D, d = c.settings["fast"], c.settings["detect"], c.data
    fast_dir, limit = c.out / "fast", c.settings["proposals"]["limit"]
    fast_cfg = {"F": F, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
                "device": c.device, "proposals": _stage_hash(c.rcnn_dir, "propose-train"),
                "max_proposals": limit or 2000, **d.data_id}

    def train(resume: bool) -> dict:
        mc = FastRCNNConfig(backbone=c.backbone, classes=list(d.train_ds.classes), roi_align=bool(F["roi_align"]),
                            representation_size=int(F["representation_size"]), min_size=int(F["min_size"]),
                            max_size=int(F["max_size"]), rois_per_image=int(F["rois_per_image"]),
                            fg_fraction=float(F["fg_fraction"]), max_proposals=int(limit or 2000),
                            score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                            detections_per_img=int(D["top_k"]))
        summary = train_fast_rcnn(d.train_ds, fast_dir, c.train_config(F), mc, c.proposals_file(d.train_split),
                                  weights=c.settings["model"]["weights"], resume=resume, command=f"{c.command} (fast)")
        return jsonable({k: v for k, v in summary.items() if k != "history"})

    console.print("[bold]Fast R-CNN[/]", highlight=False)
    c.results["fast"] = _train_and_evaluate(
        c, "fast", fast_cfg, fast_dir, train,
        lambda: FastRCNNDetector.from_run(fast_dir, device=c.device, proposals=c.proposals_file(d.test_split)),
        eval_extra={"proposals": _stage_hash(c.rcnn_dir, "propose-test")})


def _faster_step(c: _Compare) -> None:
    """Faster R-CNN: training, detection and the RPN's proposal recall."""
    from rcnn_cli.models.faster_rcnn import FasterRCNNDetector, train_faster

    G, D, d, st = c.settings["faster"], c.settings["detect"], c.data, c.st
    faster_dir = c.out / "faster"
    faster_cfg = {"G": G, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
                  "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        overrides = {k: G[k] for k in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                                       "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")}
        overrides.update(box_score_thresh=float(D["score_threshold"]), box_nms_thresh=float(D["nms"]),
                         box_detections_per_img=int(D["top_k"]))
        summary = train_faster(d.path, d.train_split, faster_dir, c.train_config(G), images=d.images,
                               backbone=c.backbone, weights=c.settings["model"]["weights"],
                               head="backbone" if c.backbone in ("vgg16", "alexnet") else "mlp",
                               anchor_sizes=G["anchor_sizes"], aspect_ratios=G["aspect_ratios"],
                               auto_anchors=bool(G["auto_anchors"]), min_size=int(G["min_size"]),
                               max_size=int(G["max_size"]), resume=resume, model_overrides=overrides,
                               command=f"{c.command} (faster)", fit=False)  # the budget's settings, exactly
        return jsonable({k: v for k, v in summary.items() if k != "history"})

    console.print("[bold]Faster R-CNN[/]", highlight=False)
    result = _train_and_evaluate(c, "faster", faster_cfg, faster_dir, train,
                                 lambda: FasterRCNNDetector.from_run(faster_dir, device=c.device))
    result["recall"] = _rpn_recall(c, faster_dir, int(G["rpn_post_nms_top_n_test"]))
    result["status"] = _status(st, ("faster-train", "faster-eval", "faster-recall"))
    c.results["faster"] = result


def _rpn_recall(c: _Compare, faster_dir: Path, top_n: int) -> dict:
    """The RPN's proposals of the test split as a proposals file, and their recall."""
    d = c.data
    rpn_file = faster_dir / f"proposals_{d.test_split}_rpn.h5"

    def fn() -> dict:
        from rcnn_cli.data.inputs import ImageInput
        from rcnn_cli.models.faster_rcnn import rpn_attrs, rpn_proposer
        from rcnn_cli.rcnn.proposals import recall_stats, run_propose

        proposer = rpn_proposer(faster_dir, device=c.device, post_nms_top_n=top_n)
        run_propose([ImageInput(r.image_id, r.path) for r in d.test_ds.records], rpn_file, min_size=0,
                    proposer=proposer, attrs=rpn_attrs(faster_dir, top_n), progress=c.progress,
                    command=f"{c.command} (RPN proposals)")
        return _recall_summary(recall_stats(d.test_ds, rpn_file))

    return c.st.run("faster-recall", {"train": c.st.hashes["faster-train"], "split": d.test_split, "top_n": top_n},
                    [rpn_file], fn, clean=[rpn_file, rpn_file.with_name(rpn_file.name + ".config.json")])


def _selective_search_recall(c: _Compare) -> None:
    """Recall of the selective-search proposals (R-CNN and Fast R-CNN share them)."""
    from rcnn_cli.rcnn.proposals import recall_stats

    prop_test = c.proposals_file(c.data.test_split)
    ss = c.st.run("ss-recall", {"proposals": _stage_hash(c.rcnn_dir, "propose-test"), "split": c.data.test_split},
                  [prop_test], lambda: _recall_summary(recall_stats(c.data.test_ds, prop_test)), clean=[])
    for m in ("hog", "rcnn", "fast"):
        if m in c.methods:
            c.results[m]["recall"] = ss


def _timing_step(c: _Compare) -> None:
    """After all training, every method timed on the same test images in one fresh child process."""
    T, R = c.settings["timing"], c.settings["rcnn"]
    ids = [r.image_id for r in c.data.test_ds.records[: int(T["images"])]]
    base = {"images": ids, "warmup": int(T["warmup"]), "repeats": int(T["repeats"]), "device": c.device,
            "threads": threads_info(), "runtime": c.runtime}
    items = [(r.image_id, str(r.path)) for r in c.data.test_ds.records]
    runs = {"rcnn": ([_stage_hash(c.rcnn_dir, s) for s in ("train-svm", "train-bbox")], c.rcnn_dir / "model"),
            "fast": (c.st.hashes.get("fast-train"), c.out / "fast"),
            "faster": (c.st.hashes.get("faster-train"), c.out / "faster"),
            "yolo": (c.st.hashes.get("yolo-train"), c.out / "yolo"),
            "overfeat": (c.st.hashes.get("overfeat-train"), c.out / "overfeat"),
            "hog": ([_stage_hash(c.out / "hog", s) for s in ("train-svm", "train-bbox")], c.out / "hog" / "model")}
    console.print(f"[bold]timing[/] on {len(ids)} test images (+{T['warmup']} warm-up), in a fresh process",
                  highlight=False)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        for kind in c.methods:
            model_hash, run_dir = runs[kind]
            job = ("rcnn" if kind == "hog" else kind, str(run_dir), str(c.device), int(R["batch_size"]), items, int(T["images"]), int(T["warmup"]),
                   int(T["repeats"]), int(base["threads"]["torch"]), "torch" if kind == "hog" else c.runtime)
            c.results[kind]["timing"] = c.st.run(f"timing-{kind}", dict(base, model=model_hash), [],
                                                 lambda job=job: child.submit(time_in_child, *job).result())


def _table_step(c: _Compare) -> None:
    """Per-image test times, proposal sources and speedups from the timings."""
    P, methods, s = c.settings["proposals"], c.methods, c.settings
    warp = lambda r: f"warp {r['warp_size']}x{r['warp_size']}+{r['padding']}"  # noqa: E731
    inputs_text = {"rcnn": warp(s["rcnn"]), "hog": "HOG of the " + warp(s["hog"]), "fast": resize_text(s["fast"]),
                   "faster": resize_text(s["faster"]),
                   "yolo": f"{s['yolo']['input_size']}x{s['yolo']['input_size']} px, {s['yolo']['grid']}x"
                           f"{s['yolo']['grid']} grid",
                   "overfeat": f"{s['overfeat']['input_size']}-px windows, "
                               f"{len(c.results.get('overfeat', {}).get('scales', []))} scales"}
    sources = {"faster": f"RPN top {s['faster']['rpn_post_nms_top_n_test']}",
               "yolo": f"none ({s['yolo']['boxes_per_cell']} boxes per cell)",
               "overfeat": "none (every window, stride 32)"}
    no_proposals = ("faster", "yolo", "overfeat")  # the regions come out of the network itself
    for m in methods:
        r = c.results[m]
        tm = r["timing"]["median"]
        r["test_seconds_per_image"] = {"without_proposals": tm["without_proposals"], "with_proposals": tm["total"],
                                       "proposals": None if m in no_proposals else tm["proposals"],
                                       "network": tm["network"], "post": tm["post"]}
        r["proposals_per_image"] = r["timing"].get("proposals_per_image")
        r["proposal_source"] = sources.get(m, f"SS {P['mode']} @{P['max_size']}px")
        r["input"] = inputs_text[m]
        if m not in no_proposals:
            r["train_proposals_seconds"] = c.train_proposals_seconds
    for key in ("without_proposals", "with_proposals"):
        sp = speedups({m: c.results[m]["test_seconds_per_image"][key] for m in methods})
        for m in methods:
            c.results[m].setdefault("speedup", {})[key] = sp[m] if "rcnn" in methods else None


def _write_report(c: _Compare, budget: str, overrides: dict, t_start: float) -> dict[str, Any]:
    from rcnn_cli.io import atomic_open, write_json, write_run_record

    d, first = c.data, c.results[c.methods[0]]["timing"]
    T = c.settings["timing"]
    report = {
        "command": c.command, "dataset": d.path, "train_split": d.train_split, "test_split": d.test_split,
        "budget": budget, "backbone": c.backbone, "methods": c.methods, "seed": c.seed, "runtime": c.runtime,
        "device": first["device"], "device_name": first["device_name"], "threads": first["threads"],
        "settings": c.settings, "overrides": jsonable(overrides),
        "train_images": len(d.train_ds.records), "test_images": len(d.test_ds.records),
        "timing": {"images": len(first["per_image"]), "warmup": int(T["warmup"]), "repeats": int(T["repeats"]),
                   "image_ids": [e["image_id"] for e in first["per_image"]]},
        "results": jsonable(c.results), "rows": table_rows(c.results, c.methods), "stages": c.st.timings,
        "total_seconds": time.perf_counter() - t_start, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(c.out / "compare.json", report)
    with atomic_open(c.out / "compare.md") as f:
        f.write(markdown(report))
    try:
        plot_compare(report, c.out / "compare.png")
    except Exception as e:  # noqa: BLE001 - a figure problem must not lose the measured table
        logger.warning("compare.png not written: %s", e)
    write_run_record(c.out / "compare.json", c.command, {
        "dataset": d.path, "train_split": d.train_split, "test_split": d.test_split, "backbone": c.backbone,
        "methods": c.methods, "budget": budget, "device": c.device, "seed": c.seed, "settings": c.settings,
        "overrides": jsonable(overrides), "stage_hashes": c.st.hashes})
    return report


def run_compare(dataset: str | Path | None = None, train_split: str | None = None, test_split: str = "test",
                out: str | Path = "compare", backbone: str = "efficientnet_lite0",
                methods: str | Sequence[str] | None = None, budget: str = "quick", device: str = "auto",
                seed: int = 0, progress: bool = True, images: str | Path | None = None,
                timing_images: int | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                command: str = "rcnn compare", runtime: str = "torch") -> dict[str, Any]:
    """Train, evaluate and time Overfeat, HOG + SVM, R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1 (``methods``,
    default all) in ``out``; write the table.

    ``dataset``: a VOC root (``train_split``/``test_split``) or COCO JSON (``images``); ``None``
    generates the built-in shapes data into ``out/data``. ``budget``: ``quick`` or ``full`` (see
    :data:`BUDGETS`); ``overrides`` (``{section: {key: value}}``) change single settings and are
    recorded. ``timing_images`` overrides ``timing.images``. ``runtime``: the CNN's runtime in the timed
    detectors (torch, onnxruntime, openvino, auto; recorded in the report). Returns the dict written to
    ``out/compare.json`` (also ``compare.md``, ``compare.png``, ``compare.json.config.json``).
    """
    from rcnn_cli.backbones import get_spec
    from rcnn_cli.runtime import resolve_device
    from rcnn_cli.workflows.pipeline import StageRunner, prepare_data

    ov = {k: dict(v) for k, v in (overrides or {}).items()}
    if timing_images is not None:
        ov.setdefault("timing", {})["images"] = int(timing_images)
    settings = budget_settings(budget, ov)
    spec = get_spec(backbone)  # unknown backbone: UserError before any work
    settings["rcnn"]["warp_size"] = int(settings["rcnn"]["warp_size"] or spec.native_size)
    resolve_device(device)  # a bad --device fails now, not after an hour
    from rcnn_cli.runtimes import resolve_runtime

    c = _Compare(Path(out), settings, parse_methods(methods), backbone, device, seed, progress, command,
                 resolve_runtime(runtime))
    c.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    c.st = StageRunner(c.out, progress)
    c.data = prepare_data(c.st, dataset, images, train_split, test_split, settings["data"], seed)
    c.results = {m: {} for m in c.methods}
    steps = [(_overfeat_step, {"overfeat"}), (_rcnn_step, {"hog", "rcnn", "fast"}), (_hog_step, {"hog"}), (_fast_step, {"fast"}),
             (_faster_step, {"faster"}), (_yolo_step, {"yolo"}), (_selective_search_recall, {"hog", "rcnn", "fast"}),
             (_timing_step, set(METHODS)), (_table_step, set(METHODS))]
    for step, needed_by in steps:
        if needed_by & set(c.methods):
            step(c)
    return _write_report(c, budget, ov, t_start)


def _status(st, names: Sequence[str]) -> str:
    return "reused" if all(st.timings[n]["status"] == "skipped" for n in names) else "ran"
