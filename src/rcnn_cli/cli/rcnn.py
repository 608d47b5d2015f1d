"""CLI commands of the classic R-CNN: finetune, train-svm, train-bbox, detect, pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli.app import app
from rcnn_cli.errors import UserError
from rcnn_cli.log import console


@app.command("finetune")
def finetune_cmd(
    dataset: Path = typer.Argument(..., help="Labelled dataset: a VOC root or a COCO JSON (with --images)."),
    split: Optional[str] = typer.Option("trainval", "--split", "-s", help="Training split (VOC)."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when DATASET is a COCO JSON."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals file of the split (rcnn propose)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone (see extract-features)."),
    weights: str = typer.Option("imagenet", "--weights", help="Starting weights: imagenet, none or a .safetensors file."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Feature layer the classifier sits on (default: the backbone's)."),
    warp_size: Optional[int] = typer.Option(None, "--warp-size", help="Warped region size in pixels (default: native)."),
    padding: int = typer.Option(16, "--padding", help="Context padding in warped pixels."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.safetensors = weights for extract-features)."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the foreground regions."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop after this many iterations."),
    lr: float = typer.Option(0.001, "--lr", help="SGD learning rate (the new classifier gets 10x)."),
    lr_steps: Optional[str] = typer.Option(None, "--lr-steps", help="Comma-separated iterations where lr drops 10x."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    batch_size: int = typer.Option(128, "--batch-size", help="Regions per minibatch."),
    fg_per_batch: int = typer.Option(32, "--fg-per-batch", help="Foreground regions per minibatch."),
    max_proposals: Optional[int] = typer.Option(None, "--max-proposals", help="Use only the top-K proposals per image."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Also checkpoint every N iterations (0: per epoch only)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune a backbone on warped regions with an N+1-way classifier (R-CNN's step 2)."""
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.finetune import FinetuneConfig, finetune

    steps = tuple(int(s) for s in lr_steps.split(",") if s.strip()) if lr_steps else ()
    ds = load_dataset(dataset, split, images)
    cfg = FinetuneConfig(backbone=backbone, weights=weights, layer=layer, warp_size=warp_size, padding=padding,
                         epochs=epochs, max_iters=max_iters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         lr_steps=steps, batch_size=batch_size, fg_per_batch=fg_per_batch, flip=flip,
                         max_proposals=max_proposals, seed=seed, device=device, checkpoint_every=checkpoint_every)
    summary = finetune(ds, proposals, out, cfg, resume=resume, progress=progress)
    last = summary.get("last", {})
    console.print(f"fine-tuned {summary['iterations']} iterations in {summary['seconds']:.0f} s; last loss "
                  f"{last.get('loss', float('nan')):.3f}, batch accuracy {last.get('accuracy', float('nan')):.2f}",
                  highlight=False)
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
    from rcnn_cli.finetune import export_backbone

    info = export_backbone(run, out)
    console.print(f"{out}: {info['backbone']} {info['trained_layers']} ({info['weights_id']}); use --weights {out} "
                  "with extract-features", highlight=False)


@app.command("train-svm")
def train_svm_cmd(
    features: Path = typer.Option(..., "--features", "-F", help="Features store of the training split (extract-features)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory (created or updated)."),
    C: float = typer.Option(0.001, "--C", help="SVM regularisation C (liblinear)."),
    bias: float = typer.Option(10.0, "--bias", help="Bias feature value (liblinear -B; the bias is regularised)."),
    pos_weight: float = typer.Option(2.0, "--pos-weight", help="Loss weight of positives (liblinear -w1)."),
    neg_overlap: float = typer.Option(0.3, "--neg-overlap", help="Negatives: IoU below this with every box of the class."),
    retrain_limit: int = typer.Option(2000, "--retrain-limit", help="Retrain after this many new hard negatives."),
    passes: int = typer.Option(1, "--passes", help="Mining passes over the features."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Proposals file the features came from (records its settings for detect)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Fine-tuned backbone weights the features were made with."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train one linear SVM per class with hard-negative mining (R-CNN's step 3)."""
    from rcnn_cli.rcnn import train_svm_model

    cfg = train_svm_model(features, out, C=C, bias=bias, pos_weight=pos_weight, neg_overlap=neg_overlap,
                          retrain_limit=retrain_limit, passes=passes, proposals=proposals, weights=weights,
                          progress=progress)
    for name, s in cfg["svm"]["stats"].items():
        console.print(f"  {name}: {s['positives']} positives, {s['negatives']} hard negatives, {s['retrains']} retrains"
                      + (f", objective {s['objective']:.4f}" if "objective" in s else ""), highlight=False)
    console.print(f"model: {out} (feature scale {cfg['feature_scale']:.4g})", highlight=False)


@app.command("train-bbox")
def train_bbox_cmd(
    features: Path = typer.Option(..., "--features", "-F", help="Features store of the training split."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory (created or updated)."),
    lam: float = typer.Option(1000.0, "--lambda", help="Ridge regularisation."),
    min_overlap: float = typer.Option(0.6, "--min-overlap", help="Train on regions with at least this IoU to a ground truth."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Proposals file the features came from."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Fine-tuned backbone weights the features were made with."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fit class-specific bounding-box ridge regressors (R-CNN's box regression)."""
    from rcnn_cli.rcnn import train_bbox_model

    cfg = train_bbox_model(features, out, lam=lam, min_overlap=min_overlap, proposals=proposals, weights=weights,
                           progress=progress)
    for name, s in cfg["bbox"]["stats"].items():
        if s.get("examples"):
            console.print(f"  {name}: {s['examples']} regions, target MSE {s['train_mse_before']:.4f} -> "
                          f"{s['train_mse_after']:.4f}", highlight=False)
        else:
            console.print(f"  {name}: no regions", highlight=False)
    console.print(f"model: {out}", highlight=False)


@app.command("detect")
def detect_cmd(
    inputs: List[str] = typer.Argument(..., help="Images, folders, globs, list files, '-' (stdin) or a dataset (with --split)."),
    model: Path = typer.Option(..., "--model", "-m", help="R-CNN model directory (train-svm / train-bbox / pipeline)."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split when INPUT is a VOC dataset."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when INPUT is a COCO JSON."),
    score_threshold: float = typer.Option(0.05, "--score-threshold", help="Drop detections below this score (sigmoid of the SVM margin)."),
    nms: float = typer.Option(0.3, "--nms", help="Per-class NMS IoU threshold."),
    top_k: int = typer.Option(100, "--top-k", help="Detections kept per image."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Precomputed proposals (else selective search with the model's settings)."),
    no_bbox: bool = typer.Option(False, "--no-bbox", help="Skip box regression."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (streamed), coco (results JSON) or voc (comp4 files in a folder)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file/folder (jsonl: stdout when omitted)."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Also write images with the boxes drawn into this folder."),
    batch_size: int = typer.Option(64, "--batch-size", help="Regions per network batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Detect objects with an R-CNN model: proposals, warped-region features, SVMs, box regression, NMS."""
    from rcnn_cli.rcnn import run_detect

    result = run_detect(inputs, model, split=split, images=images, score_threshold=score_threshold, nms=nms,
                        top_k=top_k, proposals=proposals, use_bbox=not no_bbox, fmt=fmt, out=out, draw=draw,
                        batch_size=batch_size, device=device, progress=progress)
    timings = result.get("timings", {})
    per_stage = ", ".join(f"{k} {v['median'] * 1000:.1f} ms" for k, v in timings.items() if isinstance(v, dict) and "median" in v)
    console.print(f"{result.get('images', 0)} images ({result.get('skipped', 0)} skipped), "
                  f"{result.get('detections', 0)} detections; median per image: {per_stage}", highlight=False)


@app.command("pipeline")
def pipeline_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="Labelled dataset (VOC root or COCO JSON); omitted: the built-in shapes data."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: every intermediate file, the model, metrics.json."),
    train_split: str = typer.Option("trainval", "--train-split", help="Training split."),
    test_split: str = typer.Option("test", "--test-split", help="Test split."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when DATASET is a COCO JSON."),
    train_images: int = typer.Option(200, "--train-images", help="Shapes data: training images."),
    test_images: int = typer.Option(50, "--test-images", help="Shapes data: test images."),
    image_size: int = typer.Option(256, "--image-size", help="Shapes data: image size in pixels."),
    method: str = typer.Option("selective-search", "--method", help="Proposals: selective-search, or rpn (the region proposal network of --rpn-model)."),
    rpn_model: Optional[Path] = typer.Option(None, "--rpn-model", help="`rcnn faster train` run whose RPN proposes (--method rpn; --limit boxes per image)."),
    mode: str = typer.Option("fast", "--mode", help="Selective search mode: fast or quality."),
    max_size: int = typer.Option(256, "--max-size", help="Selective search: longer image side at most this."),
    min_size: int = typer.Option(16, "--min-size", help="Proposals smaller than this are dropped."),
    limit: Optional[int] = typer.Option(100, "--limit", help="Top-K proposals per image (0: all)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Proposal processes (default: all cores)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b"),
    weights: str = typer.Option("imagenet", "--weights", help="Backbone weights: imagenet, none or a .safetensors file (e.g. from `rcnn export-backbone`)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Feature layer (see extract-features; efficientnet_lite0: pool, or grid for better box regression)."),
    warp_size: int = typer.Option(64, "--warp-size", help="Warped region size (R-CNN: 227)."),
    padding: int = typer.Option(6, "--padding", help="Context padding in warped pixels (R-CNN: 16 at 227; keep it ~1/10 of the warp)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Regions per network batch (feature extraction)."),
    finetune: bool = typer.Option(False, "--finetune/--no-finetune", help="Fine-tune the backbone first, then re-extract."),
    ft_iters: Optional[int] = typer.Option(None, "--finetune-iters", help="Fine-tuning iterations (default: one epoch)."),
    ft_epochs: int = typer.Option(1, "--finetune-epochs"),
    C: float = typer.Option(0.001, "--C"),
    bias: float = typer.Option(10.0, "--bias"),
    pos_weight: float = typer.Option(2.0, "--pos-weight"),
    lam: float = typer.Option(1000.0, "--lambda"),
    bbox: bool = typer.Option(True, "--bbox/--no-bbox", help="Train and apply box regression."),
    score_threshold: float = typer.Option(0.05, "--score-threshold"),
    nms: float = typer.Option(0.3, "--nms"),
    top_k: int = typer.Option(100, "--top-k"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run every R-CNN stage: propose, extract-features, optional finetune, train-svm, train-bbox, detect, evaluate.

    Rerunning skips the stages whose configuration is unchanged. With no DATASET, the built-in
    shapes data is generated into OUT/data first (the README's first command).
    """
    from rcnn_cli.pipeline import PipelineConfig, print_report, run_pipeline

    cfg = PipelineConfig(dataset=str(dataset) if dataset else None, train_split=train_split, test_split=test_split,
                         images=images, train_images=train_images, test_images=test_images, image_size=image_size,
                         method=method, rpn_model=str(rpn_model) if rpn_model else None, mode=mode,
                         max_size=max_size, min_size=min_size, limit=limit if limit else None,
                         workers=workers, backbone=backbone, weights=weights, layer=layer, warp_size=warp_size,
                         padding=padding,
                         batch_size=batch_size, finetune=finetune, finetune_iters=ft_iters, finetune_epochs=ft_epochs,
                         C=C, bias=bias, pos_weight=pos_weight, lam=lam, bbox=bbox, score_threshold=score_threshold,
                         nms=nms, top_k=top_k, seed=seed, device=device)
    metrics = run_pipeline(cfg, out, progress=progress)
    print_report(metrics)
