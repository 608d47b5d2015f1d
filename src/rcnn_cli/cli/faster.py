"""CLI command: ``rcnn faster train`` (library: :mod:`rcnn_cli.models.faster_rcnn`); ``rcnn faster detect`` is ``rcnn detect``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import group
from rcnn_cli.cli.detect import detect_cmd
from rcnn_cli.engine import TrainConfig
from rcnn_cli.errors import UserError
from rcnn_cli.log import console
from rcnn_cli.models.faster_rcnn import PAPER_TRAIN, TRAIN_DEFAULTS, FasterRCNNConfig
from rcnn_cli.method import DEFAULT_BACKBONE

faster_app = group("faster")

_M, _T = FasterRCNNConfig(), TrainConfig(**TRAIN_DEFAULTS)


#: The model settings this command passes to the configuration as given (parameters are named as its fields).
_MODEL_FIELDS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                 "rpn_post_nms_top_n_test", "rpn_nms_thresh", "box_batch_size_per_image", "color_jitter",
                 "hue_jitter", "crop_scale", "mosaic")


@faster_app.command("train")
@O.training_options(_T)
def train_cmd(
    ctx: typer.Context,
    dataset: Path = O.dataset_argument(),
    split: Optional[str] = O.train_split(),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (model.safetensors, config.json, checkpoint/, metrics.jsonl)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for a COCO JSON."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help=f"Backbone from the registry (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, vgg16, resnet50, alexnet; mobilenet_v3_large with --fpn). Default: {DEFAULT_BACKBONE}; with --time-budget the largest EfficientNet-Lite whose whole schedule fits it at the speed measured on your data and machine."),
    weights: str = typer.Option("imagenet", "--weights", help="Backbone initialisation: imagenet, none or a .safetensors file."),
    fpn: bool = typer.Option(False, "--fpn", help="A feature pyramid (efficientnet_lite0-2: P3-P6, one fitted anchor size per level; resnet50: 5 anchor sizes, one per level; mobilenet_v3_large: all 5 at each of 3 levels)."),
    head: str = typer.Option(_M.head, "--head", help="RoI head: mlp (two FC layers of 1024) or backbone (the net's own layers after the trunk, e.g. VGG16 fc6/fc7)."),
    anchor_sizes: Optional[str] = typer.Option(None, "--anchor-sizes", help="Anchor sizes in resized-image pixels, e.g. 128,256,512 (default: fitted to the boxes; 32, 64, ... one per level with a COCO pyramid)."),
    aspect_ratios: Optional[str] = typer.Option(None, "--aspect-ratios", help="Anchor aspect ratios h/w, e.g. 0.5,1,2 (default)."),
    auto_anchors: Optional[bool] = typer.Option(None, "--auto-anchors/--no-auto-anchors", help="Fit the anchor sizes to "
                                                "the training boxes (class-balanced quantiles; the default unless "
                                                "--anchor-sizes or --defaults paper)."),
    min_size: Optional[int] = typer.Option(None, "--min-size", help="Shorter image side after resizing (default: chosen "
                                           "from the data; the paper's 600 with --defaults paper)."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Longer image side at most (default: chosen from "
                                           "the data; 1000 with --defaults paper)."),
    train_min_sizes: Optional[str] = typer.Option(
        None, "--train-sizes", help="Multi-scale training: shorter sides drawn per image, e.g. 416,448,480,512,544 "
        "(plus --min-size, the test size; default: within +-13 % of it, chosen from the data)."),
    rpn_pre_nms_top_n_train: Optional[int] = typer.Option(
        None, "--rpn-pre-nms-train", help="RPN boxes before NMS in training (default: the paper's 12000 on a GPU; "
        "2000 on a CPU, where that NMS takes a third of each iteration at 480x640)."),
    color_jitter: float = typer.Option(
        _M.color_jitter, "--color-jitter", help="Training: each image's brightness, contrast and saturation scaled "
        "by a factor drawn in 1 +- this, e.g. 0.3 (default 0: flips and scales only; README: measured)."),
    hue_jitter: float = typer.Option(
        _M.hue_jitter, "--hue-jitter", help="Training: each image's hue turned by a fraction of the colour circle drawn "
        "in +- this, e.g. 0.015 as YOLO's HSV jitter (default 0)."),
    crop_scale: float = typer.Option(
        _M.crop_scale, "--crop-scale", help="Training: half the images cropped to a window whose sides are drawn in "
        "[this, 1] x the image's, never cutting an object below 60 % visible, e.g. 0.5 (default 1: no crops)."),
    mosaic: float = typer.Option(
        _M.mosaic, "--mosaic", help="Training: the probability that an image comes as a mosaic of four (YOLOv4's, each "
        "at its own scale, never cutting an object below 60 % visible), e.g. 0.5 (default 0: none)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from a trained detector, the box predictor "
                                       "re-initialised for your classes: coco (torchvision's COCO "
                                       "fasterrcnn_resnet50_fpn; implies --backbone resnet50 --fpn), coco-mobilenet "
                                       "(fasterrcnn_mobilenet_v3_large_fpn; --backbone mobilenet_v3_large --fpn) or a "
                                       ".safetensors/.pth state dict (with the --backbone and --fpn it was saved from)."),
    defaults: str = typer.Option("data", "--defaults", help="data: settings not given are chosen from the training "
                                 "split (printed with their reasons); paper: the Faster R-CNN paper's."),
    rpn_post_nms_top_n_train: int = typer.Option(_M.rpn_post_nms_top_n_train, "--rpn-post-nms-train", help="RPN proposals after NMS in training."),
    rpn_pre_nms_top_n_test: int = typer.Option(_M.rpn_pre_nms_top_n_test, "--rpn-pre-nms-test", help="RPN boxes before NMS at test."),
    rpn_post_nms_top_n_test: Optional[int] = typer.Option(
        None, "--rpn-post-nms-test", help=f"RPN proposals after NMS at test (default: the paper's "
        f"{_M.rpn_post_nms_top_n_test}, more for crowded images: chosen from the data)."),
    rpn_nms_thresh: float = typer.Option(_M.rpn_nms_thresh, "--rpn-nms", help="RPN proposal NMS IoU."),
    box_batch_size_per_image: int = typer.Option(_M.box_batch_size_per_image, "--rois-per-image", help="RoIs sampled per image for the head (25% foreground)."),
    **train: Any,
) -> None:
    """Train Faster R-CNN (RPN + Fast R-CNN head, jointly, four losses) on a labelled split.

    Works under `torchrun --standalone --nproc_per_node N --no-python rcnn faster train ...` (DDP).
    """
    from rcnn_cli.config import parse_floats, parse_steps
    from rcnn_cli.models.faster_rcnn import train_faster
    from rcnn_cli.device import dist_info

    p, sources = O.replayed(ctx, train["config"])
    if defaults not in ("data", "paper"):
        raise UserError(f"--defaults must be data or paper (got '{defaults}')")
    from rcnn_cli.models.faster_rcnn import COCO_INITS

    if init in COCO_INITS and sources["backbone"] != "default" and p["backbone"] != COCO_INITS[init][0]:
        raise UserError(f"--init {init} is a {COCO_INITS[init][0]} FPN detector (not --backbone {p['backbone']})")
    train_config = O.pick(p, TrainConfig, lr_steps=parse_steps(p["lr_steps"]))
    if defaults == "paper":
        train_config = replace(train_config, **{k: v for k, v in PAPER_TRAIN.items() if sources.get(k) == "default"})
    sizes = parse_floats(p["train_min_sizes"], "--train-sizes")
    values = dict(backbone=p["backbone"], weights=p["weights"], fpn=p["fpn"], head=p["head"],
                  anchor_sizes=parse_floats(p["anchor_sizes"], "--anchor-sizes"),
                  aspect_ratios=parse_floats(p["aspect_ratios"], "--aspect-ratios"), auto_anchors=p["auto_anchors"],
                  min_size=p["min_size"], max_size=p["max_size"],
                  train_min_sizes=[int(v) for v in sizes] if sizes else None, **{k: p[k] for k in _MODEL_FIELDS})
    given = {k: v for k, v in values.items() if v is not None}  # the rest: chosen from the data (or the paper's)
    summary = train_faster(dataset, p["split"], out, FasterRCNNConfig(**given), train_config, given=set(given),
                           fit=defaults == "data",
                           fit_schedule=defaults == "data" and sources["epochs"] == sources["lr_steps"] == "default",
                           images=images, val_split=p["val_split"], resume=p["resume"], init=init, sources=sources)
    if dist_info()[0] != 0:
        return  # under torchrun, rank 0 reports
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("losses", {}).items())
    console.print(f"trained {summary['iterations']} iterations in {summary['train_time_s']:.0f} s "
                  f"({summary.get('images_per_s') or 0:.2f} images/s); {losses}", highlight=False)
    console.print(f"model: {out}/model.safetensors, {out}/config.json", highlight=False)


faster_app.command("detect", help="Alias of `rcnn detect` (any run works).")(detect_cmd)
