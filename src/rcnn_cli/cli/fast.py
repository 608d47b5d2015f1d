"""CLI commands: ``rcnn fast train`` and ``rcnn fast detect`` (library: :mod:`rcnn_cli.models.fast_rcnn`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli.app import fast_app
from rcnn_cli.errors import UserError
from rcnn_cli.log import console, logger


def _steps(text: Optional[str]) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise UserError(f"--lr-steps '{text}': expected epoch numbers such as '8 11' or '8,11'") from None


@fast_app.command("train")
def train_cmd(
    dataset: Path = typer.Argument(..., help="Labelled dataset: a VOC root (with --split) or a COCO instances JSON."),
    split: str = typer.Option("trainval", "--split", "-s", help="Training split (VOC ImageSets/Main/<split>.txt)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a COCO dataset."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals HDF5 file of the training images (rcnn propose)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, metrics.jsonl, model.safetensors, config.json."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Backbone of the registry (rcnn_cli.backbones)."),
    weights: str = typer.Option("imagenet", "--weights", help="Backbone weights: imagenet | none | PATH (.safetensors)."),
    head: str = typer.Option("auto", "--head", help="RoI head: fc (two new FC layers), backbone (the backbone's own layers), auto (backbone for VGG16/AlexNet, else fc)."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    lr: float = typer.Option(0.01, "--lr", help="SGD learning rate (for the whole minibatch of one process)."),
    lr_steps: Optional[str] = typer.Option(None, "--lr-steps", help="Epochs at which lr is multiplied by --lr-gamma, e.g. '8 11' (default: 3/4 of --epochs)."),
    lr_gamma: float = typer.Option(0.1, "--lr-gamma", help="Learning-rate decay factor at each step."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", "--wd"),
    warmup_iters: int = typer.Option(100, "--warmup-iters", help="Linear warmup iterations."),
    batch_size: int = typer.Option(2, "--batch-size", "-b", help="Images per minibatch (per process under torchrun)."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (CUDA only; ignored with a warning on the CPU)."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from the last checkpoint in --out."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, "--workers", "-j", help="Data-loading worker processes."),
    min_size: int = typer.Option(600, "--min-size", help="Shorter image side after resizing (pixels)."),
    max_size: int = typer.Option(1000, "--max-size", help="Longer image side at most (pixels)."),
    roi_align: bool = typer.Option(False, "--roi-align", help="RoIAlign instead of the paper's RoI max pooling."),
    roi_size: int = typer.Option(7, "--roi-size", help="Pooled RoI size (VGG16/AlexNet backbone heads fix it at 7/6)."),
    rois_per_image: int = typer.Option(64, "--rois-per-image", help="RoIs sampled per image per minibatch."),
    fg_fraction: float = typer.Option(0.25, "--fg-fraction", help="Foreground fraction of the sampled RoIs (IoU >= 0.5)."),
    bg_iou_low: float = typer.Option(0.1, "--bg-iou-low", help="Background RoIs have IoU in [this, 0.5)."),
    max_proposals: int = typer.Option(2000, "--max-proposals", help="Top-ranked proposals used per image."),
    frozen_layers: Optional[int] = typer.Option(None, "--frozen-layers", help="Leading trunk modules kept frozen (default per backbone)."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop after this many iterations (quick runs)."),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="Report mAP (voc12) on this split after every epoch."),
    val_proposals: Optional[Path] = typer.Option(None, "--val-proposals", help="Proposals of the validation split (default: --proposals)."),
    log_every: int = typer.Option(10, "--log-every", help="Log losses to metrics.jsonl every N iterations."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train Fast R-CNN end to end (classifier, box regressors and convolutional layers jointly).

    Works under `torchrun --standalone --nproc_per_node N --no-python rcnn fast train ...` (DistributedDataParallel).
    """
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.engine import TrainConfig, dist_info
    from rcnn_cli.models.fast_rcnn import FastRCNNConfig, train_fast_rcnn

    ds = load_dataset(dataset, split, images)
    if not ds.records:
        raise UserError(f"{dataset}: split '{split}' has no images")
    if not 0 < fg_fraction <= 1:
        raise UserError(f"--fg-fraction must be in (0, 1], got {fg_fraction}")
    if rois_per_image < 1:
        raise UserError(f"--rois-per-image must be at least 1, got {rois_per_image}")
    if min_size < 32 or max_size < min_size:
        raise UserError(f"--min-size {min_size} / --max-size {max_size}: need 32 <= min-size <= max-size")
    steps = _steps(lr_steps) if lr_steps is not None else ((max(1, round(epochs * 0.75)),) if epochs > 2 else ())
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, lr_steps=steps,
                         lr_gamma=lr_gamma, warmup_iters=warmup_iters, batch_size=batch_size, amp=amp, seed=seed,
                         device=device, workers=workers, max_iters=max_iters, log_every=log_every, progress=progress)
    model_config = FastRCNNConfig(backbone=backbone, classes=list(ds.classes), head=head, roi_size=roi_size,
                                  roi_align=roi_align, frozen_layers=frozen_layers, min_size=min_size, max_size=max_size,
                                  rois_per_image=rois_per_image, fg_fraction=fg_fraction, bg_iou_low=bg_iou_low,
                                  max_proposals=max_proposals)
    val = load_dataset(dataset, val_split, images) if val_split else None
    summary = train_fast_rcnn(ds, out, config, model_config, proposals, weights=weights, resume=resume,
                              val_dataset=val, val_proposals=val_proposals,
                              command="rcnn fast train " + " ".join(map(str, [dataset, "--split", split])))
    if dist_info()[0] == 0:
        msg = (f"trained {summary['iterations']} iterations ({summary['epochs']} epochs) in "
               f"{summary['train_time_s']:.0f} s, {summary['images_per_s'] or 0:.1f} images/s on {summary['device']}"
               f" -> {out}/model.safetensors")
        if "val" in summary:
            msg += f"; {val_split} mAP ({summary['val']['metric']}) {100 * summary['val']['mAP']:.1f}"
        console.print(msg, highlight=False)


@fast_app.command("detect")
def detect_cmd(
    inputs: List[str] = typer.Argument(..., help="Images, folders, globs, list files, '-' (stdin) or a dataset (with --split)."),
    model: Path = typer.Option(..., "--model", "-m", help="Run directory of `rcnn fast train`."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="Proposals file; without it selective search runs on the fly."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split when an input is a VOC dataset."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when an input is a COCO JSON."),
    score_threshold: float = typer.Option(0.05, "--score-threshold", help="Drop detections scoring below this."),
    nms: float = typer.Option(0.3, "--nms", help="Per-class NMS IoU threshold."),
    top_k: int = typer.Option(100, "--top-k", help="Detections kept per image."),
    max_proposals: Optional[int] = typer.Option(None, "--max-proposals", help="Top-ranked proposals used per image (default: as trained)."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl | coco | voc."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file (jsonl/coco) or folder (voc); default stdout for jsonl."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Also write images with the boxes drawn into this folder."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Detect objects with a trained Fast R-CNN; streams detections as they are made."""
    from rcnn_cli.data.inputs import is_dataset, load_dataset, resolve_inputs
    from rcnn_cli.inference import run_inference
    from rcnn_cli.io import write_run_record
    from rcnn_cli.models.fast_rcnn import FastRCNNDetector

    if fmt in ("coco", "voc") and out in (None, "-"):
        raise UserError(f"--format {fmt} needs --out")
    items = resolve_inputs(inputs, split, images)
    if not items:
        raise UserError("no input images")
    detector = FastRCNNDetector(model, device=device, score_threshold=score_threshold, nms=nms, top_k=top_k,
                                proposals=proposals, max_proposals=max_proposals)
    category_ids = None
    for item in inputs:
        if is_dataset(item) and Path(item).suffix.lower() == ".json":
            category_ids = load_dataset(item, split, images).category_ids
            break
    try:
        summary = run_inference(detector, items, out, fmt=fmt, classes=detector.classes, category_ids=category_ids,
                                draw_dir=draw, progress=progress)
    finally:
        detector.close()
    if out not in (None, "-"):
        write_run_record(out, "rcnn fast detect", {
            "model": str(model), "proposals": str(proposals) if proposals else "selective search on the fly",
            "score_threshold": score_threshold, "nms": nms, "top_k": top_k, "format": fmt,
            "device": str(detector.device), "summary": summary})
    t = summary.get("timings", {})
    parts = [f"{stage} {1000 * v['median']:.1f} ms" for stage, v in t.items() if isinstance(v, dict) and "median" in v]
    logger.info("%d images (%d skipped); median per image: %s", summary.get("images", 0), summary.get("skipped", 0),
                ", ".join(parts) or "n/a")
