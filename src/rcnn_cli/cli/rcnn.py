"""CLI commands of the classic R-CNN: finetune, train-svm, train-bbox, detect, pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import app
from rcnn_cli.errors import UserError
from rcnn_cli.log import console
from rcnn_cli.method import DEFAULT_BACKBONE
from rcnn_cli.rcnn.classifiers import BBoxConfig, SVMConfig
from rcnn_cli.rcnn.finetune import FinetuneConfig
from rcnn_cli.rcnn.pipeline import PipelineConfig

_FT, _SVM, _BOX = FinetuneConfig(), SVMConfig(), BBoxConfig()
_P = PipelineConfig()


@app.command("finetune")
def finetune_cmd(
    dataset: Path = typer.Argument(..., help="Labelled dataset: a VOC root or a COCO JSON (with --images)."),
    split: Optional[str] = O.train_split(),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when DATASET is a COCO JSON."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals file of the split (rcnn propose)."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Backbone (see extract-features)."),
    weights: str = typer.Option("imagenet", "--weights", help="Starting weights: imagenet, none or a .safetensors file."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Feature layer the classifier sits on (default: the backbone's)."),
    warp_size: Optional[int] = typer.Option(None, "--warp-size", help="Warped region size in pixels (default: native)."),
    padding: int = typer.Option(_FT.padding, "--padding", help="Context padding in warped pixels."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.safetensors = weights for extract-features)."),
    epochs: int = typer.Option(_FT.epochs, "--epochs", help="Passes over the foreground regions."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop after this many iterations."),
    lr: float = typer.Option(_FT.lr, "--lr", help="SGD learning rate (the new classifier gets 10x)."),
    lr_steps: Optional[str] = typer.Option(None, "--lr-steps", help="Epochs at which lr drops 10x, e.g. 2,3 (default: none)."),
    momentum: float = typer.Option(_FT.momentum, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(_FT.weight_decay, "--weight-decay", help="SGD weight decay."),
    batch_size: int = typer.Option(_FT.batch_size, "--batch-size", help="Regions per minibatch."),
    fg_per_batch: int = typer.Option(_FT.fg_per_batch, "--fg-per-batch", help="Foreground regions per minibatch."),
    max_proposals: Optional[int] = typer.Option(None, "--max-proposals", help="Use only the top-K proposals per image."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    checkpoint_every: int = typer.Option(_FT.checkpoint_every, "--checkpoint-every", help="Also checkpoint every N iterations (0: per epoch only)."),
    seed: int = O.seed(),
    device: str = O.device(),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    progress: bool = O.progress(),
) -> None:
    """Fine-tune a backbone on warped regions with an N+1-way classifier (R-CNN's step 2)."""
    from rcnn_cli.data.inputs import load_training_dataset
    from rcnn_cli.rcnn.finetune import FinetuneConfig, finetune

    from rcnn_cli.config import parse_steps

    steps = parse_steps(lr_steps) or ()
    ds = load_training_dataset(dataset, split, images)
    cfg = FinetuneConfig(backbone=backbone, weights=weights, layer=layer, warp_size=warp_size, padding=padding,
                         epochs=epochs, max_iters=max_iters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         lr_steps=steps, batch_size=batch_size, fg_per_batch=fg_per_batch, flip=flip,
                         max_proposals=max_proposals, seed=seed, device=device, checkpoint_every=checkpoint_every)
    summary = finetune(ds, proposals, out, cfg, resume=resume, progress=progress)
    last = summary.get("last", {})
    console.print(f"fine-tuned {summary['iterations']} iterations in {summary['seconds']:.0f} s; last loss "
                  f"{last.get('loss', float('nan')):.3f}", highlight=False)
    console.print(f"weights: {summary['weights']} ({summary['weights_id']}); use --weights {summary['weights']} "
                  "with extract-features", highlight=False)


@app.command("export-backbone")
def export_backbone_cmd(
    run: Path = typer.Argument(..., help="Run directory of `rcnn fast train` or `rcnn faster train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Weights file to write (.safetensors)."),
) -> None:
    """Export a trained Fast/Faster R-CNN's backbone as --weights for extract-features or finetune.

    A detector trained on your data is a cheap stand-in for R-CNN's fine-tuning step: train it with
    `--head backbone` so that every layer the R-CNN features use is fine-tuned, not only the trunk.
    """
    from rcnn_cli.workflows.export import export_backbone

    info = export_backbone(run, out)
    console.print(f"{out}: {info['backbone']} {info['trained_layers']} ({info['weights_id']}); use --weights {out} "
                  "with extract-features", highlight=False)


@app.command("train-svm")
def train_svm_cmd(
    features: Path = typer.Option(..., "--features", "-F", help="Features store of the training split (extract-features)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory (created or updated)."),
    C: float = typer.Option(_SVM.C, "--C", help="SVM regularisation C (liblinear)."),
    bias: float = typer.Option(_SVM.bias, "--bias", help="Bias feature value (liblinear -B; the bias is regularised)."),
    pos_weight: float = typer.Option(_SVM.pos_weight, "--pos-weight", help="Loss weight of positives (liblinear -w1)."),
    neg_overlap: float = typer.Option(_SVM.neg_overlap, "--neg-overlap", help="Negatives: IoU below this with every box of the class."),
    retrain_limit: int = typer.Option(_SVM.retrain_limit, "--retrain-limit", help="Retrain after this many new hard negatives."),
    passes: int = typer.Option(_SVM.passes, "--passes", help="Mining passes over the features."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Proposals file the features came from (records its settings for detect)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Fine-tuned backbone weights the features were made with."),
    progress: bool = O.progress(),
) -> None:
    """Train one linear SVM per class with hard-negative mining (R-CNN's step 3)."""
    from rcnn_cli.rcnn.model import train_svm_model

    svm = SVMConfig(C=C, bias=bias, pos_weight=pos_weight, neg_overlap=neg_overlap, retrain_limit=retrain_limit,
                    passes=passes)
    cfg = train_svm_model(features, out, svm, proposals=proposals, weights=weights, progress=progress)
    for name, s in cfg["svm"]["stats"].items():
        console.print(f"  {name}: {s['positives']} positives, {s['negatives']} hard negatives, {s['retrains']} retrains"
                      + (f", objective {s['objective']:.4f}" if "objective" in s else ""), highlight=False)
    console.print(f"model: {out} (feature scale {cfg['feature_scale']:.4g})", highlight=False)


@app.command("train-bbox")
def train_bbox_cmd(
    features: Path = typer.Option(..., "--features", "-F", help="Features store of the training split."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory (created or updated)."),
    lam: Optional[float] = typer.Option(_BOX.lam, "--lambda", help="Ridge regularisation (default: each class's, by "
                                        "5-fold cross-validation over the training images; the paper's: 1000)."),
    min_overlap: float = typer.Option(_BOX.min_overlap, "--min-overlap", help="Train on regions with at least this IoU to a ground truth."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Proposals file the features came from."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Fine-tuned backbone weights the features were made with."),
    progress: bool = O.progress(),
) -> None:
    """Fit class-specific bounding-box ridge regressors (R-CNN's box regression)."""
    from rcnn_cli.rcnn.model import train_bbox_model

    cfg = train_bbox_model(features, out, BBoxConfig(lam=lam, min_overlap=min_overlap), proposals=proposals,
                           weights=weights, progress=progress)
    for name, s in cfg["bbox"]["stats"].items():
        if s.get("examples"):
            console.print(f"  {name}: {s['examples']} regions, target MSE {s['train_mse_before']:.4f} -> "
                          f"{s['train_mse_after']:.4f}", highlight=False)
        else:
            console.print(f"  {name}: no regions", highlight=False)
    console.print(f"model: {out}", highlight=False)


@app.command("pipeline")
def pipeline_cmd(
    ctx: typer.Context,
    dataset: Optional[Path] = typer.Argument(None, help="Labelled dataset (VOC root or COCO JSON); omitted: the built-in shapes data."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: every intermediate file, the model, metrics.json."),
    train_split: Optional[str] = typer.Option(_P.train_split, "--train-split", help="Training split (default: trainval, else train)."),
    test_split: str = typer.Option(_P.test_split, "--test-split", help="Test split."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when DATASET is a COCO JSON."),
    train_images: int = typer.Option(_P.train_images, "--train-images", help="Shapes data: training images."),
    test_images: int = typer.Option(_P.test_images, "--test-images", help="Shapes data: test images."),
    image_size: int = typer.Option(_P.image_size, "--image-size", help="Shapes data: image size in pixels."),
    method: Optional[str] = typer.Option(None, "--method", help="Proposals: rpn (a Faster R-CNN's region proposal "
                                         "network; the default on a DATASET) or selective-search (the classic R-CNN; "
                                         "the default on the built-in data)."),
    rpn_model: Optional[Path] = typer.Option(None, "--from", "--rpn-model", help="A finished `rcnn faster train` run: "
                                             "its RPN proposes, and its network computes the features when it was "
                                             "trained with --head backbone (default with --method rpn: one is trained "
                                             "first into OUT/faster)."),
    faster_head: str = typer.Option(_P.faster_head, "--faster-head", help="RoI head of the Faster R-CNN trained first: "
                                    "backbone (the network's own later layers, 64 RoIs per image: its fine-tuned "
                                    "network then computes R-CNN's features) or mlp (faster to train; ImageNet features)."),
    mode: str = typer.Option(_P.mode, "--mode", help="Selective search mode: fast or quality."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Selective search: longer image side at most this "
                                           "(default: chosen from the images)."),
    min_size: Optional[int] = typer.Option(None, "--min-box", help="Proposals smaller than this (pixels) are dropped (default: "
                                           "chosen from the smallest class)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Top-K proposals per image (0: all; default: chosen "
                                        "from the objects per image)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Proposal processes (default: all cores)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone of the registry (efficientnet_lite0-2, "
                                           "alexnet, vgg16, resnet50, hog; default: efficientnet_lite0, or with "
                                           "--time-budget the largest Lite whose Faster R-CNN stage fits it)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Backbone weights: imagenet, none or a .safetensors "
                                          "file (default: the proposing Faster R-CNN's fine-tuned trunk with "
                                          "--method rpn, else imagenet)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Feature layer (efficientnet_lite0: pool, or grid for "
                                        "better box regression; default: chosen from the number of boxes)."),
    warp_size: Optional[int] = typer.Option(None, "--warp-size", help="Warped region size (R-CNN: 227; default: the "
                                            "median box, within the device's range)."),
    padding: Optional[int] = typer.Option(None, "--padding", help="Context padding in warped pixels (R-CNN: 16 at "
                                          "227; default: a tenth of the warp)."),
    batch_size: int = typer.Option(_P.batch_size, "--batch-size", help="Regions per network batch (feature extraction)."),
    finetune: bool = typer.Option(_P.finetune, "--finetune/--no-finetune", help="Fine-tune the backbone first, then re-extract."),
    finetune_iters: Optional[int] = typer.Option(None, "--finetune-iters", help="Fine-tuning iterations (default: --finetune-epochs)."),
    finetune_epochs: int = typer.Option(_P.finetune_epochs, "--finetune-epochs", help="Fine-tuning passes over the foreground regions."),
    C: float = typer.Option(_P.C, "--C", help="SVM regularisation C (liblinear)."),
    bias: float = typer.Option(_P.bias, "--bias", help="SVM bias feature value (liblinear -B)."),
    pos_weight: float = typer.Option(_P.pos_weight, "--pos-weight", help="SVM loss weight of positives (liblinear -w1)."),
    lam: Optional[float] = typer.Option(_P.lam, "--lambda", help="Box regression ridge regularisation (default: "
                                        "each class's, by 5-fold cross-validation over the training images; "
                                        "--defaults classic: the paper's 1000)."),
    bbox: bool = typer.Option(_P.bbox, "--bbox/--no-bbox", help="Train and apply box regression."),
    score_threshold: float = O.score_threshold(_P.score_threshold),
    nms: float = O.nms(_P.nms),
    top_k: Optional[int] = O.top_k(_P.top_k),
    seed: int = O.seed(),
    device: str = O.device(),
    runtime: str = O.runtime(_P.runtime),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="e.g. 30m, 2h: the Faster R-CNN stage's "
                                              "schedule is cut to fit what the R-CNN stages after it leave (their time estimated from the region "
                                              "network's speed measured first); a ceiling, never a stretch."),
    defaults: str = typer.Option("data", "--defaults", help="data: settings not given are chosen from the training "
                                 "split (printed with their reasons); classic: selective search, 100 boxes, warp 64."),
    progress: bool = O.progress(),
    config: Optional[Path] = O.config_file(),
) -> None:
    """Run every R-CNN stage: propose, extract-features, optional finetune, train-svm, train-bbox, detect, evaluate.

    On a DATASET the proposals come from a Faster R-CNN trained first (or given with --from) and its
    fine-tuned network computes the features; --method selective-search is the classic R-CNN. Rerunning
    skips the stages whose configuration is unchanged. With no DATASET, the built-in shapes data is
    generated into OUT/data first and the classic R-CNN runs on it (the README's first command).
    """
    from rcnn_cli.rcnn.pipeline import PipelineConfig, print_report, run_pipeline

    p, sources = O.replayed(ctx, config)
    if defaults not in ("data", "classic"):
        raise UserError(f"--defaults must be data or classic (got '{defaults}')")
    cfg = O.pick(p, PipelineConfig, dataset=str(dataset) if dataset else None,
                 rpn_model=str(p["rpn_model"]) if p["rpn_model"] else None, fit=defaults == "data")
    metrics = run_pipeline(cfg, out, progress=progress, sources=sources)
    print_report(metrics)
