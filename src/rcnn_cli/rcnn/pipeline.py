"""``rcnn pipeline``: every classic R-CNN stage in one run folder, resumable by configuration.

Settings left ``None`` are chosen from the training split (:func:`resolve_settings`,
:func:`rcnn_cli.fitting.fit_rcnn`), printed once with their reasons and recorded as chosen. On a
DATASET the default R-CNN is the strong one: a Faster R-CNN is trained first (stage ``faster``,
unless ``rpn_model`` names a finished run), its RPN proposes and its fine-tuned network computes
the features; ``method="selective-search"`` gives the classic R-CNN, as on the built-in data.

Stages, in order (each writes into ``RUN_DIR`` and records its configuration):

==================  =====================================  =========================================
stage               output                                 library call
==================  =====================================  =========================================
data (no DATASET)   ``data/`` (VOC layout)                 ``rcnn_cli.data.shapes.make_shapes``
faster (rpn)        ``faster/`` (a Faster R-CNN run)       ``rcnn_cli.models.faster_rcnn.train_faster``
export-backbone     ``backbone.safetensors``               ``rcnn_cli.rcnn.finetune.export_backbone``
propose-train/test  ``proposals_<split>.h5``               ``rcnn_cli.proposals.run_propose``
features-train/test ``features_<split>[_ft].h5``           ``rcnn_cli.rcnn.features`` (extract)
finetune (opt.)     ``finetune/``                          :func:`rcnn_cli.rcnn.finetune.finetune`
train-svm           ``model/`` (svm.safetensors, config)   :func:`rcnn_cli.rcnn.train_svm_model`
train-bbox          ``model/`` (bbox.safetensors)          :func:`rcnn_cli.rcnn.train_bbox_model`
detect              ``detections_<split>.jsonl``           :func:`rcnn_cli.inference.run_inference`
evaluate            ``metrics.json``                       :func:`rcnn_cli.evaluation.evaluate`
==================  =====================================  =========================================

A stage is skipped when ``RUN_DIR/stages/<stage>.json`` records the same configuration hash and
its outputs exist. A stage's configuration includes the hashes of the stages it reads, so a
change reruns that stage and everything downstream, and nothing else. Detection on the test split
uses the cached test features (R-CNN's ``rcnn_test``), ground-truth rows excluded; ``rcnn
detect`` on the same images with the same model gives the same boxes (up to float16 storage).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rcnn_cli.detector import DetectConfig
from rcnn_cli.rcnn.classifiers import PAPER_LAMBDA, BBoxConfig, SVMConfig
from rcnn_cli.errors import UserError
from rcnn_cli.io import jsonable, read_json, write_json, write_run_record
from rcnn_cli.log import console, logger
from rcnn_cli.models import faster_rcnn
from rcnn_cli.method import DEFAULT_BACKBONE

STAGES_DIR = "stages"


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline`. ``None`` means "chosen from the training split" (with
    ``fit``; without it, :data:`UNFITTED`); the rest fit the built-in shapes data on 2 CPU cores."""

    dataset: str | None = None
    train_split: str | None = None  # None: trainval, else train (data.inputs.training_split)
    test_split: str = "test"
    images: str | None = None
    # built-in data
    train_images: int = 200
    test_images: int = 50
    image_size: int = 256
    # proposals
    method: str | None = None  # selective-search, or rpn: the region proposal network of rpn_model
    rpn_model: str | None = None  # a `rcnn faster train` run (--from); method rpn without it trains one (stage faster)
    faster_head: str = "backbone"  # stage faster's RoI head: the network's later layers, which the features come from
    mode: str = "fast"
    max_size: int | None = None  # selective search: longer image side, pixels
    min_size: int | None = None  # smallest proposal kept, pixels
    limit: int | None = None  # proposals per image (0: all)
    workers: int | None = None
    # features
    backbone: str | None = None  # None: EfficientNet-Lite0, or a larger one a time budget buys (stage faster)
    weights: str | None = None  # imagenet, none, a file; None: the Faster R-CNN run's trunk when its RPN proposes
    layer: str | None = None
    warp_size: int | None = None
    padding: int | None = None
    batch_size: int = 64
    dtype: str = "float16"
    runtime: str = "auto"  # the region network's runtime (torch, onnxruntime, openvino, auto: the fastest installed)
    # fine-tuning
    finetune: bool = False
    finetune_iters: int | None = None
    finetune_epochs: int = 1
    finetune_lr: float = 0.001
    # classifiers
    C: float = SVMConfig.C
    bias: float = SVMConfig.bias
    pos_weight: float = SVMConfig.pos_weight
    lam: float | None = BBoxConfig.lam  # None: each class's by cross-validation (train-bbox)
    bbox: bool = True
    # detection
    score_threshold: float = DetectConfig.score_threshold
    nms: float = DetectConfig.nms
    top_k: int | None = None  # None: chosen from the data (DetectConfig's 100 without fitting)
    seed: int = 0
    device: str = "auto"
    time_budget: str | float | None = None  # stage faster gets what the R-CNN stages after it leave (rcnn_seconds)
    fit: bool = True

    def __post_init__(self) -> None:
        from rcnn_cli.config import parse_duration

        if self.faster_head not in ("mlp", "backbone"):
            raise UserError(f"--faster-head must be mlp or backbone (got '{self.faster_head}')")
        if self.method not in (None, "selective-search", "rpn"):
            raise UserError(f"--method must be selective-search or rpn (got '{self.method}')")
        for name in ("limit", "max_size", "min_size", "warp_size", "padding"):
            v = getattr(self, name)
            if v is not None and (int(v) < 0 or (name == "warp_size" and int(v) < 16)):
                raise UserError(f"--{name.replace('_', '-')} {v}: must be " + ("at least 16" if name == "warp_size" else ">= 0"))
        self.time_budget = parse_duration(self.time_budget)
        DetectConfig(self.score_threshold, self.nms, DetectConfig.top_k if self.top_k is None else self.top_k)


#: The settings :func:`resolve_settings` chooses, and their values without fitting (``fit=False``,
#: ``--defaults classic``): the classic R-CNN at the built-in data's scale.
UNFITTED: dict[str, Any] = {"method": "selective-search", "limit": 100, "max_size": 256, "min_size": 16,
                            "warp_size": 64, "padding": 6, "layer": None, "weights": "imagenet", "lam": PAPER_LAMBDA,
                            "top_k": DetectConfig.top_k}
RCNN_MARGIN = 1.5  # the R-CNN stages' estimated time (regions / measured crops/s) times this, kept from the budget
FASTER_ROIS = {"backbone": 64, "mlp": 128}  # RoIs per training image: the backbone head runs its layers per RoI


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageRunner:
    """Runs named stages in a run folder; skips those whose recorded configuration matches."""

    def __init__(self, run_dir: Path, progress: bool = True):
        self.run_dir = run_dir
        self.progress = progress
        self.timings: dict[str, dict[str, Any]] = {}
        self.hashes: dict[str, str] = {}
        (run_dir / STAGES_DIR).mkdir(parents=True, exist_ok=True)

    def record_path(self, name: str) -> Path:
        return self.run_dir / STAGES_DIR / f"{name}.json"

    def done(self, name: str, h: str, outputs: list[Path]) -> dict[str, Any] | None:
        path = self.record_path(name)
        if not path.is_file():
            return None
        try:
            record = read_json(path)
        except UserError:
            return None
        if record.get("hash") != h or not all(Path(p).exists() for p in outputs):
            return None
        return record

    def run(self, name: str, config: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
            clean: list[Path] | None = None) -> Any:
        """Run ``fn`` unless the stage finished with this ``config``; returns its (recorded) result."""
        h = config_hash(config)
        self.hashes[name] = h
        record = self.done(name, h, outputs)
        if record is not None:
            self.timings[name] = {"seconds": record.get("seconds", 0.0), "status": "skipped"}
            logger.info("stage %s: up to date (config %s), skipped", name, h)
            return record.get("result")
        old = self.record_path(name)
        if old.exists():
            old.unlink()  # the previous run of this stage is no longer valid
        for p in (clean if clean is not None else outputs):
            p = Path(p)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        console.print(f"[bold]stage {name}[/]", highlight=False)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        write_json(self.record_path(name), {"stage": name, "hash": h, "config": config, "seconds": seconds,
                                           "outputs": [str(p) for p in outputs], "result": result,
                                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.timings[name] = {"seconds": seconds, "status": "ran"}
        return result


def _rpn_source(cfg: PipelineConfig) -> dict[str, Any]:
    """RPN proposals (``method "rpn"``): the run's attributes, its weights' hash (part of the stage
    configuration: retraining that run redoes the proposals) and a ``proposer`` factory."""
    from rcnn_cli.io import file_sha256
    from rcnn_cli.models.faster_rcnn import rpn_attrs, rpn_proposer

    run = Path(cfg.rpn_model or "")
    if not cfg.rpn_model or not (run / "model.safetensors").is_file():
        raise UserError(f"--from {run}: not a finished `rcnn faster train` run (no model.safetensors)")
    top_n = int(cfg.limit or 2000)
    return {"attrs": rpn_attrs(run, top_n), "weights_sha256": file_sha256(run / "model.safetensors"),
            "proposer": lambda: rpn_proposer(run, device=cfg.device, post_nms_top_n=top_n, runtime=cfg.runtime)}


def _choose_method(cfg: PipelineConfig) -> tuple[str, str]:
    """The proposal method when none is given, and why."""
    if cfg.rpn_model:
        return "rpn", f"--from {cfg.rpn_model}: its region proposal network proposes"
    if cfg.dataset is None:
        return "selective-search", ("the built-in data: the classic R-CNN of the lecture, in minutes (on a DATASET "
                                    "a Faster R-CNN is trained first and its RPN proposes)")
    if cfg.backbone == "hog":
        return "selective-search", f"{cfg.backbone} has no CNN trunk to train a region proposal network on"
    return "rpn", ("a Faster R-CNN is trained first (stage faster) and its RPN proposes: R-CNN on 100 RPN boxes "
                   "beats 100-300 selective-search boxes by 20-35 mAP (README); --method selective-search: "
                   "the classic R-CNN")


def _tuned_trunk(cfg: PipelineConfig, run_dir: Path) -> tuple[str, str]:
    """``(weights, reason)`` of the features: the proposing Faster R-CNN's exported network
    (``run_dir/backbone.safetensors``) when it fine-tuned every layer the features come from (same
    backbone, ``--head backbone``, no feature pyramid), else ImageNet's."""
    if cfg.method != "rpn":
        return "imagenet", "ImageNet's: no detector was trained on this data"
    model: dict[str, Any] = {"backbone": cfg.backbone, "head": cfg.faster_head, "fpn": False}  # stage faster's
    if cfg.rpn_model:
        try:
            model = read_json(Path(cfg.rpn_model) / "config.json").get("model", {})
        except UserError:
            model = {}
    if model.get("backbone") == cfg.backbone and model.get("head") == "backbone" and not model.get("fpn"):
        return (str(run_dir / "backbone.safetensors"),
                "the proposing Faster R-CNN's network, every layer fine-tuned on this data (--head backbone; "
                "rcnn export-backbone)")
    return "imagenet", ("ImageNet's: the proposing Faster R-CNN fine-tuned only its trunk (MLP head), and a tuned "
                        "trunk under untuned later layers made worse features (README: raccoon 70.5 vs 79.9)")


def resolve_settings(cfg: PipelineConfig, run_dir: Path, stats) -> tuple[PipelineConfig, Any]:
    """``cfg`` with every setting left ``None`` chosen from the training split's ``stats``
    (:class:`rcnn_cli.fitting.DataStats`; with ``fit``) or taken from :data:`UNFITTED`, and the
    :class:`rcnn_cli.fitting.Fitted` record of the chosen ones. A backbone left ``None`` is
    :data:`DEFAULT_BACKBONE` here; stage faster may buy a larger one (:func:`_faster_stage`)."""
    from rcnn_cli.backbones import get_spec
    from rcnn_cli.fitting import Fitted, fit_rcnn
    from rcnn_cli.device import resolve_device

    cfg = replace(cfg, backbone=cfg.backbone or DEFAULT_BACKBONE)
    given = {k: getattr(cfg, k) for k in UNFITTED}
    if not cfg.fit:
        unfitted = dict(UNFITTED, method="rpn" if cfg.rpn_model else UNFITTED["method"])
        return replace(cfg, **{k: unfitted[k] if v is None else v for k, v in given.items()}), Fitted()
    method, why = _choose_method(cfg)
    f = fit_rcnn(stats, given, method, why, resolve_device(cfg.device).type,
                 get_spec(cfg.backbone).layers)
    cfg = replace(cfg, **f.values)
    f.choose("weights", *_tuned_trunk(cfg, run_dir))
    cfg = replace(cfg, weights=f.values.get("weights", cfg.weights))
    return cfg, f


@dataclass
class DataSource:
    """A labelled dataset with its two splits, as every workflow reads it."""

    path: str
    train_split: str
    test_split: str
    images: str | None
    data_id: dict[str, Any]
    train_ds: Any
    test_ds: Any


def prepare_data(st: StageRunner, dataset: str | Path | None, images: str | Path | None, train_split: str,
                 test_split: str, generator: dict[str, Any], seed: int) -> DataSource:
    """The dataset of a workflow: ``dataset`` as given, or (None) the built-in shapes data generated
    as stage ``data`` into the run folder (``generator``: ``train``, ``test``, ``size``)."""
    from rcnn_cli.data.inputs import load_dataset, training_split

    if dataset is None:
        data_dir = st.run_dir / "data"

        def make() -> dict:
            from rcnn_cli.data.shapes import make_shapes

            make_shapes(data_dir, train=int(generator["train"]), test=int(generator["test"]),
                        size=int(generator["size"]), seed=seed)
            return {"path": str(data_dir)}

        st.run("data", {"generator": "shapes", **generator, "seed": seed}, [data_dir], make)
        path, train_split, test_split, images = str(data_dir), "trainval", "test", None
        data_id: dict[str, Any] = {"data": st.hashes["data"]}
    else:
        if not Path(dataset).exists():
            raise UserError(f"{dataset}: dataset not found")
        path = str(dataset)
        train_split = training_split(path, train_split)
        data_id = {"dataset": str(Path(path).resolve()), "images": str(images) if images else None,
                   "train_split": train_split, "test_split": test_split}
    train_ds = load_dataset(path, train_split, images)
    test_ds = load_dataset(path, test_split, images, classes=list(train_ds.classes))
    if not train_ds.records or not test_ds.records:
        raise UserError(f"empty split: {len(train_ds.records)} training and {len(test_ds.records)} test images")
    return DataSource(path, train_split, test_split, str(images) if images else None, data_id, train_ds, test_ds)


#: Bootstrap resamples of the test images behind the VOC12 interval the pipeline and ``rcnn compare`` report.
EVAL_RESAMPLES = 1000


def evaluate_file(det_path: Path, dataset) -> dict[str, Any]:
    """VOC07 and VOC12 results of a detections file on a labelled split; VOC12's with its 95 %
    interval over :data:`EVAL_RESAMPLES` resamples of the images (``"bootstrap"``)."""
    from rcnn_cli.evaluation import evaluate, json_summary
    from rcnn_cli.io.detections import read_detections

    dets = read_detections(det_path, dataset)
    return {m: jsonable(json_summary(evaluate(dataset, dets, metric=m, bootstrap=EVAL_RESAMPLES * (m == "voc12"))))
            for m in ("voc07", "voc12")}


@dataclass
class _Run:
    """What the stages of :func:`run_pipeline` share."""

    cfg: PipelineConfig
    asked: PipelineConfig  # the caller's, settings left None unchosen
    dir: Path
    st: StageRunner
    data: DataSource
    progress: bool
    start_weights: str
    weights: str = ""
    weights_stage: str | None = None
    suffix: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    stats: Any = None  # the training split's rcnn_cli.fitting.DataStats

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    def proposals(self, tag: str) -> Path:
        return self.dir / f"proposals_{self.split(tag)}.h5"

    def features(self, tag: str) -> Path:
        return self.dir / f"features_{self.split(tag)}{self.suffix}.h5"

    def split(self, tag: str) -> str:
        return self.data.train_split if tag == "train" else self.data.test_split

    def dataset(self, tag: str):
        return self.data.train_ds if tag == "train" else self.data.test_ds

    def tuned_weights(self) -> str | None:
        return None if self.weights_stage is None else self.weights


def crops_per_second(cfg: PipelineConfig, probe: int = 128, cache_dir: Path | None = None) -> float:
    """Warped regions per second of the region network on this machine (``cfg``'s backbone, layer,
    warp and runtime; ImageNet weights: the speed does not depend on them), from ``probe`` random
    boxes on a random image after one warm-up pass; an exported graph is cached in ``cache_dir``."""
    import numpy as np
    from PIL import Image

    from rcnn_cli.rcnn.features import FeatureExtractor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    xy = rng.uniform(0, 400, (probe, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(16, 200, (probe, 2))], 1).astype(np.float32)
    fx = FeatureExtractor(cfg.backbone, "imagenet", cfg.layer, cfg.warp_size, int(cfg.padding or 0), cfg.batch_size,
                          cfg.device, runtime=cfg.runtime, cache_dir=cache_dir)
    fx(image, boxes[:8])
    t0 = time.perf_counter()
    fx(image, boxes)
    return probe / max(time.perf_counter() - t0, 1e-6)


def rcnn_seconds(cfg: PipelineConfig, images: int, image_pixels: float, rate: float) -> float:
    """The R-CNN stages' expected seconds after stage faster: per image, the RPN's trunk pass (as
    many crops as the image holds warps) and ``cfg.limit`` warped regions at ``rate`` crops/s,
    times :data:`RCNN_MARGIN` (SVM training, detection, reading and writing)."""
    per_image = int(cfg.limit or 2000) + image_pixels / float(cfg.warp_size) ** 2
    return RCNN_MARGIN * images * per_image / rate


def _stage_budget(r: _Run, cfg: PipelineConfig) -> dict[str, Any]:
    """Stage faster's share of ``--time-budget`` with ``cfg``'s backbone (its ceiling, ``"faster_s"``):
    what the R-CNN stages after it leave at the region network's speed measured here, at least a
    fifth of the budget; with the measured speed and the estimate."""
    from rcnn_cli.fitting import image_scale
    from rcnn_cli.device import resolve_device

    short, _, _ = image_scale(r.stats, resolve_device(cfg.device).type)
    pixels = short * short * r.stats.aspect()
    images = len(r.data.train_ds.records) + len(r.data.test_ds.records)
    rate = crops_per_second(cfg, cache_dir=r.dir / "graphs")
    rest = rcnn_seconds(cfg, images, pixels, rate)
    return {"backbone": cfg.backbone, "budget_s": cfg.time_budget, "crops_per_s": round(rate, 1),
            "rcnn_estimate_s": round(rest, 1), "faster_s": round(max(cfg.time_budget - rest, cfg.time_budget / 5), 1)}


def _recorded_backbone(run: Path) -> str | None:
    """The backbone a Faster R-CNN run (finished or checkpointed) recorded, ``None`` without a record."""
    try:
        return read_json(run / "config.json").get("model", {}).get("backbone")
    except UserError:
        return None


def _faster_stage(r: _Run) -> str:
    """Train the Faster R-CNN whose RPN proposes (``method "rpn"`` without ``rpn_model``) into
    ``RUN/faster`` with the settings chosen from the data, within what the budget leaves it
    (:func:`_stage_budget`); by default with the backbone's own later layers as its RoI head
    (``faster_head``, 64 RoIs per image, the Fast R-CNN paper's), so that every layer R-CNN's
    features come from is fine-tuned. With a time budget and no ``backbone`` asked, the stage chooses
    its backbone as ``rcnn faster train`` does, each candidate within what the R-CNN stages leave with
    it (:func:`rcnn_cli.models.faster_rcnn.train.fit_backbone`). A half-finished run of the same
    configuration resumes from its checkpoint. Returns the backbone it trained."""
    cfg, out = r.cfg, r.path(faster_rcnn.NAME)
    fit = r.asked.backbone is None and r.asked.weights is None and bool(cfg.time_budget) and cfg.fit
    c = {"backbone": "fitted" if fit else cfg.backbone, "head": cfg.faster_head, "seed": cfg.seed,
         "time_budget": cfg.time_budget, **r.data.data_id}
    done = r.st.done(faster_rcnn.NAME, config_hash(c), [out / "model.safetensors"])
    plans: dict[str, dict[str, Any]] = {}

    def budget_for(name: str) -> float:
        if name not in plans:
            alt = cfg if name == cfg.backbone else resolve_settings(replace(r.asked, backbone=name), r.dir, r.stats)[0]
            plans[name] = plan = _stage_budget(r, alt)
            logger.info("time budget with %s: %.0f s for the Faster R-CNN stage; the R-CNN stages after it about "
                        "%.0f s (%.0f crops/s measured)", name, plan["faster_s"], plan["rcnn_estimate_s"],
                        plan["crops_per_s"])
        return plans[name]["faster_s"]

    prev = r.st.record_path(faster_rcnn.NAME)
    resumes = (out / "checkpoint").exists() and not prev.exists()  # a half-finished run of this configuration
    budget = None if done or not cfg.time_budget else budget_for((resumes and _recorded_backbone(out)) or cfg.backbone)

    def train() -> dict:
        from rcnn_cli.engine import TrainConfig
        tc = TrainConfig(**dict(faster_rcnn.TRAIN_DEFAULTS, seed=cfg.seed, device=cfg.device, time_budget=budget,
                                progress=r.progress))
        model = faster_rcnn.FasterRCNNConfig(backbone=cfg.backbone, head=cfg.faster_head,
                                             box_batch_size_per_image=FASTER_ROIS[cfg.faster_head])
        summary = faster_rcnn.train_faster(r.data.path, r.data.train_split, out, model, tc,
                                           given=set() if fit else {"backbone"}, budget_for=budget_for if fit else None,
                                           fit_schedule=True, images=r.data.images, resume=resumes,
                                           command=f"rcnn pipeline ({faster_rcnn.NAME})")
        return {k: summary.get(k) for k in ("iterations", "train_time_s", "images_per_s", "time_budget")}

    r.st.run(faster_rcnn.NAME, c, [out / "model.safetensors"], train, clean=[] if resumes else [out])
    backbone = _recorded_backbone(out) or cfg.backbone
    r.budget = plans.get(backbone, {})
    r.cfg = replace(r.cfg, rpn_model=str(out))
    return backbone


def _faster_reason(run: Path, setting: str) -> str | None:
    """Why stage faster's run chose ``setting`` (its record), for the pipeline's own table; ``None``
    where it did not choose it."""
    try:
        fitted = read_json(run / "config.json")["model"]["trained_on"]["fitted"]
        return f"stage faster's: {fitted[setting]['reason']}"
    except (UserError, KeyError, TypeError):
        return None


def _export_stage(r: _Run) -> None:
    """The proposing Faster R-CNN's fine-tuned network as the features' weights (``rcnn export-backbone``)."""
    from rcnn_cli.io import file_sha256

    run, out = Path(str(r.cfg.rpn_model)), Path(str(r.cfg.weights))

    def export() -> dict:
        from rcnn_cli.rcnn.finetune import export_backbone

        return jsonable(export_backbone(run, out, faster_rcnn.METHOD.backbone))

    r.st.run("export-backbone", {"run": str(run.resolve()), "weights": file_sha256(run / "model.safetensors")},
             [out], export, clean=[out, out.with_name(out.name + ".config.json")])


def _propose_stage(r: _Run, tag: str) -> None:
    from rcnn_cli.data.inputs import ImageInput

    cfg, out = r.cfg, r.proposals(tag)
    prop_cfg = {"method": cfg.method, "mode": cfg.mode, "max_size": cfg.max_size, "min_size": cfg.min_size,
                "limit": cfg.limit}
    rpn = _rpn_source(cfg) if cfg.method == "rpn" else None
    if rpn:
        prop_cfg.update(rpn_model=rpn["attrs"]["model"], rpn_weights=rpn["weights_sha256"])

    def propose() -> dict:
        from rcnn_cli.proposals import ProposalConfig, run_propose

        inputs = [ImageInput(x.image_id, x.path) for x in r.dataset(tag).records]
        config = ProposalConfig(method=cfg.method, mode=cfg.mode, max_size=cfg.max_size, min_size=cfg.min_size,
                                limit=cfg.limit)
        return jsonable(run_propose(inputs, out, config, workers=cfg.workers, progress=r.progress,
                                    proposer=rpn["proposer"]() if rpn else None, attrs=rpn["attrs"] if rpn else None))

    r.st.run(f"propose-{tag}", dict(prop_cfg, split=r.split(tag), **r.data.data_id), [out], propose,
             clean=[out, out.with_name(out.name + ".config.json")])


def _features_stage(r: _Run, tag: str) -> None:
    from rcnn_cli.rcnn.features import FeatureConfig, run_extract_features

    cfg, out = r.cfg, r.features(tag)
    c = {"backbone": cfg.backbone, "layer": cfg.layer, "warp_size": cfg.warp_size, "padding": cfg.padding,
         "dtype": cfg.dtype, "split": r.split(tag), "proposals": r.st.hashes[f"propose-{tag}"],
         "weights": r.start_weights if r.weights_stage is None else r.st.hashes[r.weights_stage]}

    def extract() -> dict:
        config = FeatureConfig(backbone=cfg.backbone, weights=str(r.weights), layer=cfg.layer, warp_size=cfg.warp_size,
                               padding=cfg.padding, batch_size=cfg.batch_size, dtype=cfg.dtype, runtime=cfg.runtime,
                               device=cfg.device)
        return jsonable(run_extract_features(r.dataset(tag), r.proposals(tag), out, config, progress=r.progress))

    r.st.run(f"features-{tag}{r.suffix}", c, [out], extract, clean=[out, out.with_name(out.name + ".config.json")])


def _finetune_stage(r: _Run) -> None:
    """Optional fine-tuning; the features after it are extracted again with the tuned weights."""
    cfg, ft_dir = r.cfg, r.path("finetune")
    ft_cfg = {"backbone": cfg.backbone, "weights": r.start_weights, "layer": cfg.layer, "warp_size": cfg.warp_size,
              "padding": cfg.padding, "iters": cfg.finetune_iters, "epochs": cfg.finetune_epochs,
              "lr": cfg.finetune_lr, "seed": cfg.seed, "proposals": r.st.hashes["propose-train"]}

    def ft() -> dict:
        from rcnn_cli.rcnn.finetune import FinetuneConfig, finetune

        fc = FinetuneConfig(backbone=cfg.backbone, weights=cfg.weights, layer=cfg.layer, warp_size=cfg.warp_size,
                            padding=cfg.padding, epochs=cfg.finetune_epochs, max_iters=cfg.finetune_iters,
                            lr=cfg.finetune_lr, seed=cfg.seed, device=cfg.device)
        return jsonable(finetune(r.data.train_ds, r.proposals("train"), ft_dir, fc,
                                 resume=(ft_dir / "checkpoint").exists(), progress=r.progress,
                                 command="rcnn pipeline (finetune)"))

    # a half-finished fine-tuning of the same configuration resumes from its checkpoint
    prev = r.st.record_path("finetune")
    r.st.run("finetune", ft_cfg, [ft_dir / "model.safetensors"], ft,
             clean=[ft_dir] if (prev.exists() or not (ft_dir / "checkpoint").exists()) else [])
    r.weights, r.weights_stage, r.suffix = str(ft_dir / "model.safetensors"), "finetune", "_ft"


def _svm_stage(r: _Run) -> None:
    cfg = r.cfg
    svm_cfg = {"features": r.st.hashes[f"features-train{r.suffix}"], "C": cfg.C, "bias": cfg.bias,
               "pos_weight": cfg.pos_weight, "proposals": r.st.hashes["propose-train"]}

    def svm() -> dict:
        from rcnn_cli.rcnn.classifiers import SVMConfig
        from rcnn_cli.rcnn.model import train_svm_model

        c = train_svm_model(r.features("train"), r.model_dir, SVMConfig(C=cfg.C, bias=cfg.bias, pos_weight=cfg.pos_weight),
                            proposals=r.proposals("train"), weights=r.tuned_weights(), progress=r.progress)
        return {"feature_scale": c["feature_scale"], "stats": c["svm"]["stats"]}

    r.st.run("train-svm", svm_cfg, [r.model_dir / "svm.safetensors"], svm, clean=[r.model_dir])


def _bbox_stage(r: _Run) -> None:
    cfg = r.cfg

    def bbox() -> dict:
        from rcnn_cli.rcnn.classifiers import BBoxConfig
        from rcnn_cli.rcnn.model import train_bbox_model

        c = train_bbox_model(r.features("train"), r.model_dir, BBoxConfig(lam=cfg.lam), weights=r.tuned_weights(),
                             progress=r.progress)
        return {"stats": c["bbox"]["stats"]}

    r.st.run("train-bbox", {"svm": r.st.hashes["train-svm"], "lambda": cfg.lam, "min_overlap": BBoxConfig.min_overlap},
             [r.model_dir / "bbox.safetensors"], bbox, clean=[r.model_dir / "bbox.safetensors"])


def _detect_stage(r: _Run) -> None:
    """Detection on the test split from its cached features (R-CNN's ``rcnn_test``), through the one
    inference loop."""
    cfg, det_path = r.cfg, r.path(f"detections_{r.data.test_split}.jsonl")
    det_cfg = {"svm": r.st.hashes["train-svm"], "bbox": r.st.hashes.get("train-bbox") if cfg.bbox else None,
               "features": r.st.hashes[f"features-test{r.suffix}"], "score_threshold": cfg.score_threshold,
               "nms": cfg.nms, "top_k": cfg.top_k}

    def detect() -> dict:
        from rcnn_cli.data.inputs import ImageInput
        from rcnn_cli.inference import DetectOutput, run_inference
        from rcnn_cli.rcnn.features import load_features
        from rcnn_cli.rcnn.model import RCNNDetector

        with load_features(r.features("test")) as store:
            detector = RCNNDetector(r.model_dir, device=cfg.device, features=store, use_bbox=cfg.bbox,
                                    config=DetectConfig(cfg.score_threshold, cfg.nms, cfg.top_k))
            inputs = [ImageInput(x.image_id, x.path) for x in r.data.test_ds.records if x.image_id in store]
            res = run_inference(detector, inputs, DetectOutput(det_path), classes=detector.classes,
                                progress=r.progress)
        write_run_record(det_path, "rcnn pipeline (detect)", {"model": str(r.model_dir),
                                                              "features": str(r.features("test")), **det_cfg})
        return {k: v for k, v in jsonable(res).items() if k != "per_image"}

    r.st.run("detect", det_cfg, [det_path], detect, clean=[det_path])


def _evaluate_stage(r: _Run) -> None:
    det_path = r.path(f"detections_{r.data.test_split}.jsonl")
    r.results = r.st.run("evaluate", {"detect": r.st.hashes["detect"]}, [],
                         lambda: evaluate_file(det_path, r.data.test_ds))


#: The R-CNN stages in order: (name, function, run only when).
STAGES: list[tuple[str, Callable[[_Run], None], Callable[[PipelineConfig], bool]]] = [
    ("propose-train", lambda r: _propose_stage(r, "train"), lambda c: True),
    ("propose-test", lambda r: _propose_stage(r, "test"), lambda c: True),
    ("finetune", _finetune_stage, lambda c: c.finetune),
    ("features-train", lambda r: _features_stage(r, "train"), lambda c: True),
    ("features-test", lambda r: _features_stage(r, "test"), lambda c: True),
    ("train-svm", _svm_stage, lambda c: True),
    ("train-bbox", _bbox_stage, lambda c: c.bbox),
    ("detect", _detect_stage, lambda c: True),
    ("evaluate", _evaluate_stage, lambda c: True),
]


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, progress: bool = True,
                 sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole R-CNN pipeline in ``run_dir`` (:data:`STAGES`, after the settings
    left ``None`` are chosen and, for RPN proposals without ``rpn_model``, a Faster R-CNN is trained);
    returns the metrics written to ``run_dir/metrics.json`` (``voc07``/``voc12`` evaluate results,
    ``mAP``, stage timings, the budget). ``sources`` (setting -> where its value came from) goes
    into the record beside it, with the chosen settings' reasons."""
    from rcnn_cli.backbones import weights_id

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    st = StageRunner(run_dir, progress)
    t_start = time.perf_counter()
    data = prepare_data(st, cfg.dataset, cfg.images, cfg.train_split, cfg.test_split,
                        {"train": cfg.train_images, "test": cfg.test_images, "size": cfg.image_size}, cfg.seed)
    from rcnn_cli.fitting import data_stats

    stats = data_stats(data.train_ds)  # a split without one valid box: a one-line error before any work
    asked = cfg
    cfg, fitted = resolve_settings(asked, run_dir, stats)
    r = _Run(cfg, asked, run_dir, st, data, progress, "", weights=str(cfg.weights), stats=stats)
    if cfg.method == "rpn" and not cfg.rpn_model:
        backbone = _faster_stage(r)
        if backbone != cfg.backbone:  # the budget bought a larger one: the R-CNN settings follow it
            cfg, fitted = resolve_settings(replace(asked, backbone=backbone), run_dir, stats)
            r.cfg, r.weights = replace(cfg, rpn_model=r.cfg.rpn_model), str(cfg.weights)
        why = _faster_reason(r.path(faster_rcnn.NAME), "backbone")
        if why:  # stage faster chose it
            fitted.choose("backbone", backbone, why)
    fitted.print("R-CNN settings chosen from the training data (flags override)")
    sources = dict(sources or {}, **{k: f"chosen: {why}" for k, why in fitted.reasons.items()})
    if fitted.values.get("weights", "").endswith(".safetensors"):
        _export_stage(r)
    # a weights file enters the stage configurations by its content: a retrained file redoes the features
    r.start_weights = r.weights if r.weights in ("imagenet", "none") else weights_id(cfg.backbone, r.weights)
    for _name, stage, wanted in STAGES:
        if wanted(r.cfg):
            stage(r)
    cfg = r.cfg
    det_path = r.path(f"detections_{data.test_split}.jsonl")
    metrics = {
        "dataset": data.path, "train_split": data.train_split, "test_split": data.test_split,
        "mAP": {m: r.results[m]["mAP"] for m in ("voc07", "voc12")},
        "voc07": r.results["voc07"], "voc12": r.results["voc12"], "stages": st.timings,
        "total_seconds": time.perf_counter() - t_start, "config": asdict(cfg), "model": str(r.model_dir),
        "detections": str(det_path),
    }
    if cfg.time_budget:
        metrics["time_budget"] = dict(r.budget, budget_s=cfg.time_budget, total_s=round(metrics["total_seconds"], 1),
                                      within=metrics["total_seconds"] <= cfg.time_budget)
    write_json(run_dir / "metrics.json", metrics)
    write_run_record(run_dir / "metrics.json", "rcnn pipeline", dict(asdict(cfg), stage_hashes=st.hashes,
                                                                     sources=sources, fitted=fitted.record()))
    return metrics


def print_report(metrics: dict[str, Any]) -> None:
    """Print the stage timings and the evaluation tables (stderr, rich)."""
    from rich.table import Table

    from rcnn_cli.evaluation import bootstrap_lines, results_table

    t = Table(title="stages", title_justify="left")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    for name, s in metrics["stages"].items():
        t.add_row(name, s["status"], f"{s['seconds']:.1f}")
    t.add_section()
    t.add_row("total (this run)", "", f"{metrics['total_seconds']:.1f}")
    console.print(t)
    for m in ("voc07", "voc12"):
        console.print(results_table(metrics[m]))
    for line in bootstrap_lines(metrics["voc12"]):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"mAP@0.5: voc07 {100 * metrics['mAP']['voc07']:.2f}, voc12 {100 * metrics['mAP']['voc12']:.2f} "
                  f"(metrics: {Path(metrics['model']).parent / 'metrics.json'})", highlight=False)
