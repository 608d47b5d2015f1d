"""CLI command: ``rcnn fast train`` (library: :mod:`rcnn_cli.models.fast_rcnn`); ``rcnn fast detect`` is ``rcnn detect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import group
from rcnn_cli.cli.detect import detect_cmd
from rcnn_cli.engine import TrainConfig
from rcnn_cli.errors import UserError
from rcnn_cli.log import console
from rcnn_cli.models.fast_rcnn import TRAIN_DEFAULTS, FastRCNNConfig
from rcnn_cli.method import DEFAULT_BACKBONE

fast_app = group("fast")

_M, _T = FastRCNNConfig(), TrainConfig(**TRAIN_DEFAULTS)


@fast_app.command("train")
@O.training_options(_T)
def train_cmd(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Labelled dataset: a VOC root (with --split) or a COCO instances JSON."),
    split: Optional[str] = O.train_split(),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a COCO dataset."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals HDF5 file of the training images (rcnn propose)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, metrics.jsonl, model.safetensors, config.json."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Backbone of the registry (rcnn_cli.backbones)."),
    weights: str = typer.Option("imagenet", "--weights", help="Backbone weights: imagenet | none | PATH (.safetensors)."),
    head: str = typer.Option(_M.head, "--head", help="RoI head: mlp (two new FC layers), backbone (the backbone's own layers), auto (backbone for VGG16/AlexNet, else mlp)."),
    min_size: int = typer.Option(_M.min_size, "--min-size", help="Shorter image side after resizing (pixels; default: "
                                 "chosen from the data, the paper's 600 with --defaults paper)."),
    max_size: int = typer.Option(_M.max_size, "--max-size", help="Longer image side at most (pixels; default: chosen "
                                 "from the data, 1000 with --defaults paper)."),
    defaults: str = typer.Option("data", "--defaults", help="data: image sizes and epochs not given are chosen from "
                                 "the training split (printed with their reasons); paper: the paper's."),
    roi_align: bool = typer.Option(False, "--roi-align", help="RoIAlign instead of the paper's RoI max pooling."),
    roi_size: int = typer.Option(_M.roi_size, "--roi-size", help="Pooled RoI size (VGG16/AlexNet backbone heads fix it at 7/6)."),
    rois_per_image: int = typer.Option(_M.rois_per_image, "--rois-per-image", help="RoIs sampled per image per minibatch."),
    fg_fraction: float = typer.Option(_M.fg_fraction, "--fg-fraction", help="Foreground fraction of the sampled RoIs (IoU >= 0.5)."),
    bg_iou_low: float = typer.Option(_M.bg_iou_low, "--bg-iou-low", help="Background RoIs have IoU in [this, 0.5)."),
    max_proposals: int = typer.Option(_M.max_proposals, "--max-proposals", help="Top-ranked proposals used per image."),
    frozen_layers: Optional[int] = typer.Option(None, "--frozen-layers", help="Leading trunk modules kept frozen (default per backbone)."),
    val_proposals: Optional[Path] = typer.Option(None, "--val-proposals", help="Proposals of the validation split (default: --proposals)."),
    **train: Any,
) -> None:
    """Train Fast R-CNN end to end (classifier, box regressors and convolutional layers jointly).

    Works under `torchrun --standalone --nproc_per_node N --no-python rcnn fast train ...` (DistributedDataParallel).
    """
    from rcnn_cli.config import parse_steps
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.models.fast_rcnn import train_fast_rcnn
    from rcnn_cli.device import dist_info

    p, sources = O.replayed(ctx, train["config"])
    p["split"] = training_split(dataset, p["split"])
    ds = load_training_dataset(dataset, p["split"], images)
    train_config = O.pick(p, TrainConfig, lr_steps=parse_steps(p["lr_steps"]))
    model_config = O.pick(p, FastRCNNConfig, classes=list(ds.classes), proposals={})
    val = load_dataset(dataset, p["val_split"], images) if p["val_split"] else None
    summary = train_fast_rcnn(ds, out, train_config, model_config, proposals, weights=p["weights"], resume=p["resume"],
                              val_dataset=val, val_proposals=val_proposals, sources=sources,
                              fit=_fitted_names(sources, defaults),
                              command="rcnn fast train " + " ".join(map(str, [dataset, "--split", p["split"]])))
    if dist_info()[0] == 0:
        msg = (f"trained {summary['iterations']} iterations ({summary['epochs']} epochs) in "
               f"{summary['train_time_s']:.0f} s, {summary['images_per_s'] or 0:.1f} images/s on {summary['device']}"
               f" -> {out}/model.safetensors")
        if "val" in summary:
            msg += f"; {p['val_split']} mAP ({summary['val']['metric']}) {100 * summary['val']['mAP']:.1f}"
        console.print(msg, highlight=False)


def _fitted_names(sources: dict[str, str], defaults: str) -> list[str]:
    """The settings ``train_fast_rcnn`` chooses from the data: those left at their default."""
    if defaults not in ("data", "paper"):
        raise UserError(f"--defaults must be data or paper (got '{defaults}')")
    if defaults == "paper":
        return []
    names = [n for n in ("min_size", "max_size") if sources.get(n) == "default"]
    return names + (["epochs"] if sources.get("epochs") == sources.get("lr_steps") == "default" else [])


fast_app.command("detect", help="Alias of `rcnn detect` (any run works).")(detect_cmd)
