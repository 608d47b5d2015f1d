"""CLI commands: ``rcnn faster train | detect`` (library: :mod:`rcnn_cli.models.faster_rcnn`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli.app import faster_app
from rcnn_cli.errors import UserError
from rcnn_cli.log import console


def _steps(text: Optional[str]) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise UserError(f"--lr-steps: expected comma-separated epochs, got '{text}'") from None


@faster_app.command("train")
def train_cmd(
    dataset: Path = typer.Argument(..., help="VOC root or COCO instances JSON."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Training split (VOC ImageSets/Main/<split>.txt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (model.safetensors, config.json, checkpoint/, metrics.jsonl)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for a COCO JSON."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Backbone from the registry (efficientnet_lite0, vgg16, resnet50, alexnet)."),
    weights: str = typer.Option("imagenet", "--weights", help="Backbone initialisation: imagenet, none or a .safetensors file."),
    fpn: bool = typer.Option(False, "--fpn", help="ResNet-50 with a feature pyramid (5 anchor sizes, one per level)."),
    head: str = typer.Option("mlp", "--head", help="RoI head: mlp (two FC layers of 1024) or backbone (the net's own layers after the trunk, e.g. VGG16 fc6/fc7)."),
    epochs: int = typer.Option(12, "--epochs", help="Training epochs."),
    lr: float = typer.Option(0.01, "--lr", help="Base learning rate (SGD, momentum 0.9)."),
    lr_steps: str = typer.Option("8,11", "--lr-steps", help="Epochs at which the learning rate drops 10x."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="SGD weight decay."),
    warmup_iters: int = typer.Option(100, "--warmup-iters", help="Linear warmup iterations."),
    batch_size: int = typer.Option(2, "--batch-size", "-b", help="Images per batch (per process)."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (CUDA only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR's last checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    workers: int = typer.Option(0, "--workers", help="Data loader worker processes."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop after this many iterations (quick checks)."),
    anchor_sizes: Optional[str] = typer.Option(None, "--anchor-sizes", help="Anchor sizes in resized-image pixels, e.g. 128,256,512 (default; 32,...,512 with --fpn)."),
    aspect_ratios: Optional[str] = typer.Option(None, "--aspect-ratios", help="Anchor aspect ratios h/w, e.g. 0.5,1,2 (default)."),
    auto_anchors: bool = typer.Option(False, "--auto-anchors", help="Fit the anchor sizes to the training boxes (class-balanced quantiles)."),
    min_size: int = typer.Option(600, "--min-size", help="Shorter image side after resizing."),
    max_size: int = typer.Option(1000, "--max-size", help="Longer image side at most."),
    train_sizes: Optional[str] = typer.Option(
        None, "--train-sizes", help="Multi-scale training: shorter sides drawn per image, e.g. 416,448,480,512,544 "
        "(plus --min-size, the test size); raise --max-size so that the larger ones are not capped."),
    rpn_pre_nms_train: int = typer.Option(
        12000, "--rpn-pre-nms-train", help="RPN boxes before NMS in training (the paper's 12000; on a CPU that NMS "
        "takes a third of each iteration at 480x640, and torchvision's 2000 trains 1.5x faster)."),
    rpn_post_nms_train: int = typer.Option(2000, "--rpn-post-nms-train", help="RPN proposals after NMS in training."),
    rpn_pre_nms_test: int = typer.Option(6000, "--rpn-pre-nms-test", help="RPN boxes before NMS at test."),
    rpn_post_nms_test: int = typer.Option(300, "--rpn-post-nms-test", help="RPN proposals after NMS at test."),
    rpn_nms: float = typer.Option(0.7, "--rpn-nms", help="RPN proposal NMS IoU."),
    rois_per_image: int = typer.Option(128, "--rois-per-image", help="RoIs sampled per image for the head (25% foreground)."),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="Split evaluated (mAP voc12) after every epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train Faster R-CNN (RPN + Fast R-CNN head, jointly, four losses) on a labelled split.

    Works under `torchrun --standalone --nproc_per_node N --no-python rcnn faster train ...` (DDP).
    """
    from rcnn_cli.engine import TrainConfig, dist_info
    from rcnn_cli.models.faster_rcnn import parse_floats, train_faster

    for name, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value < 16:
            raise UserError(f"{name} must be at least 16 (got {value})")
    if max_size < min_size:
        raise UserError(f"--max-size ({max_size}) is smaller than --min-size ({min_size})")
    config = TrainConfig(epochs=epochs, lr=lr, lr_steps=_steps(lr_steps), weight_decay=weight_decay,
                         warmup_iters=warmup_iters, batch_size=batch_size, amp=amp, seed=seed, device=device,
                         workers=workers, max_iters=max_iters, progress=progress)
    overrides = {"rpn_pre_nms_top_n_train": rpn_pre_nms_train, "rpn_post_nms_top_n_train": rpn_post_nms_train,
                 "rpn_pre_nms_top_n_test": rpn_pre_nms_test, "rpn_post_nms_top_n_test": rpn_post_nms_test,
                 "rpn_nms_thresh": rpn_nms, "box_batch_size_per_image": rois_per_image}
    summary = train_faster(dataset, split, out, config, images=images, backbone=backbone, weights=weights, fpn=fpn,
                           head=head, anchor_sizes=parse_floats(anchor_sizes, "--anchor-sizes"),
                           aspect_ratios=parse_floats(aspect_ratios, "--aspect-ratios"), auto_anchors=auto_anchors,
                           min_size=min_size, max_size=max_size,
                           train_sizes=[int(v) for v in parse_floats(train_sizes, "--train-sizes") or []],
                           val_split=val_split, resume=resume,
                           model_overrides=overrides)
    if dist_info()[0] != 0:
        return  # under torchrun, rank 0 reports
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("losses", {}).items())
    console.print(f"trained {summary['iterations']} iterations in {summary['train_time_s']:.0f} s "
                  f"({summary.get('images_per_s') or 0:.2f} images/s); {losses}", highlight=False)
    console.print(f"model: {out}/model.safetensors, {out}/config.json", highlight=False)


@faster_app.command("detect")
def detect_cmd(
    inputs: List[str] = typer.Argument(..., help="Images, folders, globs, list files, '-' (stdin) or a dataset (with --split)."),
    model: Path = typer.Option(..., "--model", "-m", help="Run directory written by `rcnn faster train`."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split when INPUT is a VOC dataset."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when INPUT is a COCO JSON."),
    score_threshold: float = typer.Option(0.05, "--score-threshold", help="Drop detections scoring below this."),
    nms: float = typer.Option(0.3, "--nms", help="Per-class NMS IoU threshold."),
    top_k: int = typer.Option(100, "--top-k", help="Detections kept per image."),
    rpn_top_n: Optional[int] = typer.Option(None, "--rpn-top-n", help="RPN proposals per image (default: the model's, 300)."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (streamed), coco (results JSON) or voc (comp4 files in a folder)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file/folder (jsonl: stdout when omitted)."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Also write images with the boxes drawn into this folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Detect objects with a trained Faster R-CNN: no external proposals, one pass per image."""
    from rcnn_cli.data.inputs import is_dataset, load_dataset, resolve_inputs
    from rcnn_cli.inference import run_inference
    from rcnn_cli.io import write_run_record
    from rcnn_cli.models.faster_rcnn import FasterRCNNDetector

    if fmt not in ("jsonl", "coco", "voc"):
        raise UserError(f"--format must be jsonl, coco or voc (got '{fmt}')")
    if fmt in ("coco", "voc") and out in (None, "-"):
        raise UserError(f"--format {fmt} needs --out")
    items = resolve_inputs(inputs, split=split, images=images)
    if not items:
        raise UserError("no input images")
    detector = FasterRCNNDetector(model, device=device, score_threshold=score_threshold, nms=nms, top_k=top_k,
                                  rpn_post_nms_top_n=rpn_top_n)
    category_ids = coco_ids = None
    datasets = [i for i in inputs if is_dataset(i)]
    if len(datasets) == 1:
        ds = load_dataset(datasets[0], split, images)
        if ds.format == "coco":
            from rcnn_cli.detections import coco_image_ids

            category_ids = {c: ds.category_ids[c] for c in detector.classes if c in ds.category_ids} or None
            coco_ids = coco_image_ids(ds)
    result = run_inference(detector, items, out, fmt=fmt, classes=detector.classes, category_ids=category_ids,
                           draw_dir=draw, progress=progress, coco_image_ids=coco_ids, split=split or "test")
    if out not in (None, "-"):
        write_run_record(Path(out), "rcnn faster detect", {
            "inputs": list(inputs), "split": split, "model": str(model), "format": fmt,
            "model_config": detector.config, **detector.settings(), "result": result})
    timings = result.get("timings", {})
    per_stage = ", ".join(f"{k} {v['median'] * 1000:.1f} ms" for k, v in timings.items() if isinstance(v, dict) and "median" in v)
    console.print(f"{result.get('images', 0)} images ({result.get('skipped', 0)} skipped); median per image: {per_stage}",
                  highlight=False)
