"""What the registry knows of R-CNN and of its HOG + SVM variant (the same chain on HOG features).

R-CNN's runs are model directories (:mod:`rcnn_cli.rcnn.model`) made stage by stage or by
:func:`rcnn_cli.rcnn.pipeline.run_pipeline`; in ``rcnn compare`` its pipeline also writes the
selective-search files that HOG + SVM and Fast R-CNN read (``provides_proposals``), and its test
time is the one the speedups divide (``reference``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from rcnn_cli.log import logger
from rcnn_cli.method import CompareEntry, Export, Method, measured
from rcnn_cli.rcnn.classifiers import PAPER_LAMBDA, SVMConfig
from rcnn_cli.rcnn.model import NAME, RCNNDetector

__all__ = ["METHOD", "HOG"]

HOG_NAME = "hog"


def _network(run) -> tuple[Any, Any, dict[str, Any]]:
    """The region network's export (:class:`rcnn_cli.method.Export`): warped crops -> features."""
    import torch

    from rcnn_cli.backbones import build_feature_extractor
    from rcnn_cli.backends import normalization
    from rcnn_cli.rcnn.model import load_model

    m = load_model(run.root)
    net, s = build_feature_extractor(m.config["backbone"], m.weights, m.config["layer"]).eval(), m.config["warp_size"]
    return net, torch.rand(2, 3, s, s), {
        "what": "the R-CNN region network", "normalization": normalization(m.config["backbone"]),
        "inputs": [{"name": "images", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        "outputs": [{"name": "features", "shape": ["batch", int(m.config["feature_dim"])], "dtype": "float32"}],
        "caller": f"propose regions, warp each to {s}x{s} with {m.config['padding']} px of context "
                  "(rcnn_cli.rcnn.features.warp_regions), normalise, run this, then score the features with "
                  "svm.safetensors (sigmoid of w.x + b after the model's feature_scale), box regression, NMS"}


def pipeline_config(c, out_dir: Path, backbone: str, R: Mapping[str, Any]):
    """The :class:`~rcnn_cli.rcnn.pipeline.PipelineConfig` of ``rcnn compare``'s settings (``c``: its context)."""
    from rcnn_cli.rcnn.pipeline import PipelineConfig

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


def _pipeline_result(metrics: Mapping[str, Any], run_dir: Path, interval) -> dict[str, Any]:
    """A pipeline run's row data: status, training seconds (its training stages), mAP."""
    stages = metrics["stages"]
    train_stages = [s for s in stages if s.startswith(("features-train", "finetune", "train-svm", "train-bbox"))]
    return {"status": "reused" if all(v["status"] == "skipped" for v in stages.values()) else "ran",
            "run_dir": str(run_dir), "train_seconds": float(sum(stages[s]["seconds"] for s in train_stages)),
            "train_stages": {s: stages[s]["seconds"] for s in train_stages}, "mAP": dict(metrics["mAP"]),
            "mAP_interval": interval(metrics["voc12"])}


def _rcnn_step(c) -> None:
    """The whole R-CNN pipeline (it also makes the proposals files Fast R-CNN and HOG + SVM read)."""
    from rcnn_cli.rcnn.pipeline import run_pipeline

    if NAME not in c.methods:
        logger.info("Fast R-CNN and HOG + SVM read R-CNN's proposals files: running the R-CNN pipeline for them")
    run_dir = c.out / NAME
    metrics = run_pipeline(pipeline_config(c, run_dir, c.backbone, c.settings[NAME]), run_dir, progress=c.progress)
    if NAME in c.methods:
        c.results[NAME] = _pipeline_result(metrics, run_dir, c.map_interval)
    c.train_proposals_seconds = float(metrics["stages"].get("propose-train", {}).get("seconds", 0.0))


def _hog_step(c) -> None:
    """The same R-CNN chain (R-CNN's proposals, SVMs with hard negatives, box regression) on HOG features."""
    from rcnn_cli.rcnn.pipeline import STAGES_DIR, run_pipeline

    c.shared_proposals()
    rcnn_dir, hog_dir = c.out / NAME, c.out / HOG_NAME
    (hog_dir / STAGES_DIR).mkdir(parents=True, exist_ok=True)
    for split in (c.data.train_split, c.data.test_split):  # R-CNN's proposals, taken as they are
        for name in (f"proposals_{split}.h5", f"proposals_{split}.h5.config.json"):
            src, dst = rcnn_dir / name, hog_dir / name
            if src.is_file() and (not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime):
                shutil.copy2(src, dst)
    for tag in ("propose-train", "propose-test"):
        shutil.copy2(rcnn_dir / STAGES_DIR / f"{tag}.json", hog_dir / STAGES_DIR / f"{tag}.json")
    R = dict(c.settings[NAME], **c.settings[HOG_NAME], finetune=False)
    metrics = run_pipeline(pipeline_config(c, hog_dir, "hog", R), hog_dir, progress=c.progress)
    c.results[HOG_NAME] = _pipeline_result(metrics, hog_dir, c.map_interval)


def _timed(name: str):
    """What the timing child loads: the model directory, with the hash of the stages that made it."""
    return lambda c: ([c.stage_hash(c.out / name, s) for s in ("train-svm", "train-bbox")], c.out / name / "model")


def _warp(r: Mapping[str, Any]) -> str:
    return f"warp {r['warp_size']}x{r['warp_size']}+{r['padding']}"


def _describe_rcnn(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    R = s[NAME]
    ft = f"fine-tuned ({R['finetune_epochs']} epochs, lr {R['finetune_lr']})" if R["finetune"] else "no fine-tuning"
    return (f"- R-CNN: warp {R['warp_size']}x{R['warp_size']} with {R['padding']} px context, {ft}, "
            f"SVM C {R['C']} bias {R['bias']} pos-weight {R['pos_weight']}, "
            f"{'bbox regression lambda ' + str(R['lam']) if R['bbox'] else 'no bbox regression'}")


def _describe_hog(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    H = s[HOG_NAME]
    return (f"- HOG + SVM: the R-CNN chain on OpenCV's Dalal-Triggs HOG (8x8 cells, 16x16 blocks, 9 "
            f"orientations) of each region warped to {H['warp_size']}x{H['warp_size']} with {H['padding']} px "
            f"context; R-CNN's proposals, SVM and box-regression settings")


def _hog_claim(report: Mapping[str, Any]) -> str | None:
    """The lecture: CNN features are a big improvement over HOG."""
    maps = measured(report, (HOG_NAME, NAME), "mAP", "voc12")
    if maps is None:
        return None
    mh, mc = maps
    return (f"- lecture: CNN features are a big improvement over pre-CNN HOG features. Here, the same "
            f"R-CNN chain: {100 * mc:.1f} (CNN) vs {100 * mh:.1f} (HOG) mAP (VOC12) -> "
            f"{'holds' if mc > mh else 'does not hold'}.")


_SVM = {"finetune_lr": 0.001, "C": SVMConfig.C, "bias": SVMConfig.bias, "pos_weight": SVMConfig.pos_weight,
        "lam": PAPER_LAMBDA, "bbox": True}

#: ``rcnn compare``'s settings per budget; ``warp_size`` None is the backbone's native size (224; AlexNet 227).
COMPARE_SETTINGS = {
    "quick": {"warp_size": 64, "padding": 6, "batch_size": 64, "finetune": False, "finetune_epochs": 1, **_SVM},
    "full": {"warp_size": None, "padding": 16, "batch_size": 64, "finetune": True, "finetune_epochs": 2, **_SVM},
}
HOG_COMPARE_SETTINGS = {"quick": {"warp_size": 64, "padding": 6}, "full": {"warp_size": 64, "padding": 16}}

METHOD = Method(
    name=NAME, title="R-CNN", detector=RCNNDetector, legacy=("rcnn-model",),
    export=Export(network=_network, batched=True),
    compare=CompareEntry(settings=COMPARE_SETTINGS, step=_rcnn_step, describe=_describe_rcnn,
                         input_text=lambda s, result: _warp(s[NAME]), timed=_timed(NAME),
                         detect_options=lambda s: {"batch_size": int(s[NAME]["batch_size"])},
                         provides_proposals=True, reference=True))

HOG = Method(
    name=HOG_NAME, title="HOG + SVM",
    compare=CompareEntry(settings=HOG_COMPARE_SETTINGS, step=_hog_step, describe=_describe_hog, claim=_hog_claim,
                         input_text=lambda s, result: "HOG of the " + _warp(s[HOG_NAME]), timed=_timed(HOG_NAME),
                         detect_options=lambda s: {"batch_size": int(s[NAME]["batch_size"])}, runtime=False))
