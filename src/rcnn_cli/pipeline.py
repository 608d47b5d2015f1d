"""``rcnn pipeline``: every classic R-CNN stage in one run folder, resumable by configuration.

Stages, in order (each writes into ``RUN_DIR`` and records its configuration):

==================  =====================================  =========================================
stage               output                                 library call
==================  =====================================  =========================================
data (no DATASET)   ``data/`` (VOC layout)                 ``rcnn_cli.data.shapes.make_shapes``
propose-train/test  ``proposals_<split>.h5``               ``rcnn_cli.proposals.run_propose``
features-train/test ``features_<split>[_ft].h5``           ``rcnn_cli.features`` (extract)
finetune (opt.)     ``finetune/``                          :func:`rcnn_cli.finetune.finetune`
train-svm           ``model/`` (svm.safetensors, config)   :func:`rcnn_cli.rcnn.train_svm_model`
train-bbox          ``model/`` (bbox.safetensors)          :func:`rcnn_cli.rcnn.train_bbox_model`
detect              ``detections_<split>.jsonl``           :func:`rcnn_cli.rcnn.detect_cached`
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rcnn_cli.errors import UserError
from rcnn_cli.io import read_json, write_json, write_run_record
from rcnn_cli.log import console, logger

STAGES_DIR = "stages"


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline`. Defaults fit the built-in shapes data on 2 CPU cores."""

    dataset: str | None = None
    train_split: str = "trainval"
    test_split: str = "test"
    images: str | None = None
    # built-in data
    train_images: int = 200
    test_images: int = 50
    image_size: int = 256
    # proposals
    method: str = "selective-search"  # or "rpn": the region proposal network of rpn_model
    rpn_model: str | None = None  # a `rcnn faster train` run directory (method "rpn")
    mode: str = "fast"
    max_size: int = 256
    min_size: int = 16
    limit: int | None = 100
    workers: int | None = None
    # features
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    layer: str | None = None
    warp_size: int = 64
    padding: int = 6
    batch_size: int = 64
    dtype: str = "float16"
    # fine-tuning
    finetune: bool = False
    finetune_iters: int | None = None
    finetune_epochs: int = 1
    finetune_lr: float = 0.001
    # classifiers
    C: float = 0.001
    bias: float = 10.0
    pos_weight: float = 2.0
    lam: float = 1000.0
    bbox: bool = True
    # detection
    score_threshold: float = 0.05
    nms: float = 0.3
    top_k: int = 100
    seed: int = 0
    device: str = "auto"


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


def _extract(dataset_path: str, split: str | None, images: str | None, proposals: Path, out: Path,
             cfg: PipelineConfig, weights: str, progress: bool) -> dict[str, Any]:
    """Extract features of a dataset split through rcnn_cli.features."""
    from rcnn_cli import features as F
    from rcnn_cli.data.inputs import load_dataset

    ds = load_dataset(dataset_path, split, images)
    return F.run_extract_features(ds, proposals, out, backbone=cfg.backbone, weights=weights, layer=cfg.layer,
                                  warp_size=cfg.warp_size, padding=cfg.padding, batch_size=cfg.batch_size,
                                  dtype=cfg.dtype, device=cfg.device, progress=progress)


def _rpn_source(cfg: PipelineConfig) -> dict[str, Any]:
    """RPN proposals (``method "rpn"``): the run's attributes, its weights' hash (part of the stage
    configuration: retraining that run redoes the proposals) and a ``proposer`` factory."""
    from rcnn_cli.io import file_sha256
    from rcnn_cli.models.faster_rcnn import rpn_attrs, rpn_proposer

    run = Path(cfg.rpn_model or "")
    if not cfg.rpn_model or not (run / "model.safetensors").is_file():
        raise UserError(f"--method rpn needs --rpn-model RUN_DIR, a finished `rcnn faster train` run (got '{run}')")
    top_n = int(cfg.limit or 2000)
    return {"attrs": rpn_attrs(run, top_n), "weights_sha256": file_sha256(run / "model.safetensors"),
            "proposer": lambda: rpn_proposer(run, device=cfg.device, post_nms_top_n=top_n)}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole R-CNN pipeline in ``run_dir``; returns the metrics written to
    ``run_dir/metrics.json`` (``voc07``/``voc12`` evaluate results, ``mAP``, stage timings)."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import ImageInput, load_dataset

    # a weights file enters the stage configurations by its content: a retrained file redoes the features
    start_weights = cfg.weights if cfg.weights in ("imagenet", "none") else weights_id(cfg.backbone, cfg.weights)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    st = StageRunner(run_dir, progress)
    t_start = time.perf_counter()
    cfg_dict = asdict(cfg)

    # ---- data
    if cfg.dataset is None:
        data_dir = run_dir / "data"
        data_cfg = {"generator": "shapes", "train": cfg.train_images, "test": cfg.test_images, "size": cfg.image_size,
                    "seed": cfg.seed}

        def make() -> dict:
            from rcnn_cli.data.shapes import make_shapes

            make_shapes(data_dir, train=cfg.train_images, test=cfg.test_images, size=cfg.image_size, seed=cfg.seed)
            return {"path": str(data_dir)}

        st.run("data", data_cfg, [data_dir], make)
        dataset_path, data_id = str(data_dir), {"data": st.hashes["data"]}
        train_split, test_split = "trainval", "test"
    else:
        dataset_path = cfg.dataset
        p = Path(dataset_path)
        if not p.exists():
            raise UserError(f"{p}: dataset not found")
        data_id = {"dataset": str(p.resolve()), "images": cfg.images}
        train_split, test_split = cfg.train_split, cfg.test_split
    train_ds = load_dataset(dataset_path, train_split, cfg.images)
    test_ds = load_dataset(dataset_path, test_split, cfg.images)
    if not train_ds.records or not test_ds.records:
        raise UserError(f"empty split: {len(train_ds.records)} training and {len(test_ds.records)} test images")

    # ---- proposals
    prop_cfg = {"method": cfg.method, "mode": cfg.mode, "max_size": cfg.max_size, "min_size": cfg.min_size,
                "limit": cfg.limit}
    rpn = None
    if cfg.method == "rpn":
        rpn = _rpn_source(cfg)
        prop_cfg.update(rpn_model=rpn["attrs"]["model"], rpn_weights=rpn["weights_sha256"])
    prop_files = {}
    for tag, split, ds in (("train", train_split, train_ds), ("test", test_split, test_ds)):
        out = run_dir / f"proposals_{split}.h5"
        prop_files[tag] = out

        def propose(ds=ds, out=out) -> dict:
            from rcnn_cli.proposals import run_propose

            inputs = [ImageInput(r.image_id, r.path) for r in ds.records]
            proposer = rpn["proposer"]() if rpn else None
            return _jsonable(run_propose(inputs, out, method=cfg.method, mode=cfg.mode, max_size=cfg.max_size,
                                         min_size=cfg.min_size, limit=cfg.limit, workers=cfg.workers,
                                         progress=progress, proposer=proposer, attrs=rpn["attrs"] if rpn else None))

        st.run(f"propose-{tag}", dict(prop_cfg, split=split, **data_id), [out], propose,
               clean=[out, out.with_name(out.name + ".config.json")])

    feat_cfg = {"backbone": cfg.backbone, "layer": cfg.layer, "warp_size": cfg.warp_size, "padding": cfg.padding,
                "dtype": cfg.dtype}

    def features(tag: str, split: str, weights: str, weights_stage: str | None, suffix: str) -> Path:
        out = run_dir / f"features_{split}{suffix}.h5"
        c = dict(feat_cfg, split=split, weights=start_weights if weights_stage is None else st.hashes[weights_stage],
                 proposals=st.hashes[f"propose-{tag}"])
        st.run(f"features-{tag}{suffix}", c, [out],
               lambda: _jsonable(_extract(dataset_path, split, cfg.images, prop_files[tag], out, cfg, weights, progress)),
               clean=[out, out.with_name(out.name + ".config.json")])
        return out

    # ---- features (and optional fine-tuning, then features again)
    weights, weights_stage, suffix = cfg.weights, None, ""
    if cfg.finetune:
        ft_dir = run_dir / "finetune"
        ft_cfg = {"backbone": cfg.backbone, "weights": start_weights, "layer": cfg.layer, "warp_size": cfg.warp_size,
                  "padding": cfg.padding, "iters": cfg.finetune_iters, "epochs": cfg.finetune_epochs,
                  "lr": cfg.finetune_lr, "seed": cfg.seed, "proposals": st.hashes["propose-train"]}

        def ft() -> dict:
            from rcnn_cli.finetune import FinetuneConfig, finetune

            fc = FinetuneConfig(backbone=cfg.backbone, weights=cfg.weights, layer=cfg.layer, warp_size=cfg.warp_size,
                                padding=cfg.padding, epochs=cfg.finetune_epochs, max_iters=cfg.finetune_iters,
                                lr=cfg.finetune_lr, seed=cfg.seed, device=cfg.device)
            return _jsonable(finetune(train_ds, prop_files["train"], ft_dir, fc, resume=(ft_dir / "checkpoint").exists(),
                                      progress=progress, command="rcnn pipeline (finetune)"))

        # a half-finished fine-tuning of the same configuration resumes from its checkpoint
        prev = st.record_path("finetune")
        st.run("finetune", ft_cfg, [ft_dir / "model.safetensors"], ft,
               clean=[ft_dir] if (prev.exists() or not (ft_dir / "checkpoint").exists()) else [])
        weights, weights_stage, suffix = str(ft_dir / "model.safetensors"), "finetune", "_ft"
    feat_train = features("train", train_split, weights, weights_stage, suffix)
    feat_test = features("test", test_split, weights, weights_stage, suffix)

    # ---- classifiers
    model_dir = run_dir / "model"
    svm_cfg = {"features": st.hashes[f"features-train{suffix}"], "C": cfg.C, "bias": cfg.bias,
               "pos_weight": cfg.pos_weight, "proposals": st.hashes["propose-train"]}

    def svm() -> dict:
        from rcnn_cli.rcnn import train_svm_model

        c = train_svm_model(feat_train, model_dir, C=cfg.C, bias=cfg.bias, pos_weight=cfg.pos_weight,
                            proposals=prop_files["train"], weights=None if weights_stage is None else weights,
                            progress=progress)
        return {"feature_scale": c["feature_scale"], "stats": c["svm"]["stats"]}

    st.run("train-svm", svm_cfg, [model_dir / "svm.safetensors"], svm, clean=[model_dir])
    bbox_stage = None
    if cfg.bbox:
        bbox_cfg = {"svm": st.hashes["train-svm"], "lambda": cfg.lam, "min_overlap": 0.6}

        def bbox() -> dict:
            from rcnn_cli.rcnn import train_bbox_model

            c = train_bbox_model(feat_train, model_dir, lam=cfg.lam, min_overlap=0.6,
                                 weights=None if weights_stage is None else weights, progress=progress)
            return {"stats": c["bbox"]["stats"]}

        st.run("train-bbox", bbox_cfg, [model_dir / "bbox.safetensors"], bbox, clean=[model_dir / "bbox.safetensors"])
        bbox_stage = st.hashes["train-bbox"]

    # ---- detect (cached test features) and evaluate
    det_path = run_dir / f"detections_{test_split}.jsonl"
    det_cfg = {"svm": st.hashes["train-svm"], "bbox": bbox_stage, "features": st.hashes[f"features-test{suffix}"],
               "score_threshold": cfg.score_threshold, "nms": cfg.nms, "top_k": cfg.top_k}

    def detect() -> dict:
        from rcnn_cli.features import load_features
        from rcnn_cli.proposals import load as load_proposals
        from rcnn_cli.rcnn import detect_cached, load_model

        model = load_model(model_dir)
        with load_proposals(prop_files["test"]) as pr:
            sizes = {i: tuple(pr.image_size(i)) for i in pr.ids()}
        reader = load_features(feat_test)
        try:
            res = detect_cached(model, reader, det_path, "jsonl", cfg.score_threshold, cfg.nms, cfg.top_k,
                                use_bbox=cfg.bbox, sizes=sizes, progress=progress)
        finally:
            reader.close()
        write_run_record(det_path, "rcnn pipeline (detect)", {"model": str(model_dir), "features": str(feat_test),
                                                              **det_cfg})
        return res

    st.run("detect", det_cfg, [det_path], detect, clean=[det_path])

    def evaluate() -> dict:
        from rcnn_cli.detections import read_detections
        from rcnn_cli.evaluation import evaluate as ev
        from rcnn_cli.evaluation import json_summary

        dets = read_detections(det_path, test_ds)
        return {m: _jsonable(json_summary(ev(test_ds, dets, metric=m))) for m in ("voc07", "voc12")}

    results = st.run("evaluate", {"detect": st.hashes["detect"]}, [], evaluate)

    metrics = {
        "dataset": dataset_path, "train_split": train_split, "test_split": test_split,
        "mAP": {m: results[m]["mAP"] for m in ("voc07", "voc12")},
        "voc07": results["voc07"], "voc12": results["voc12"],
        "stages": st.timings,
        "total_seconds": time.perf_counter() - t_start,
        "config": cfg_dict, "model": str(model_dir), "detections": str(det_path),
    }
    write_json(run_dir / "metrics.json", metrics)
    write_run_record(run_dir / "metrics.json", "rcnn pipeline", dict(cfg_dict, stage_hashes=st.hashes))
    return metrics


def print_report(metrics: dict[str, Any]) -> None:
    """Print the stage timings and the evaluation tables (stderr, rich)."""
    from rich.table import Table

    from rcnn_cli.evaluation import results_table

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
    console.print(f"mAP@0.5: voc07 {100 * metrics['mAP']['voc07']:.2f}, voc12 {100 * metrics['mAP']['voc12']:.2f} "
                  f"(metrics: {Path(metrics['model']).parent / 'metrics.json'})", highlight=False)
