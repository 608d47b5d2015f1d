"""CLI command: ``rcnn overfeat train`` (library: :mod:`rcnn_cli.models.overfeat`); detection is
``rcnn detect --model RUN [--merge greedy|nms]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import group
from rcnn_cli.engine import TrainConfig
from rcnn_cli.log import console
from rcnn_cli.models.overfeat import TRAIN_DEFAULTS, OverfeatConfig

overfeat_app = group("overfeat")

_M, _T = OverfeatConfig(), TrainConfig(**TRAIN_DEFAULTS)


@overfeat_app.command("train")
@O.training_options(_T)
def train_cmd(
    ctx: typer.Context,
    dataset: Path = O.dataset_argument(),
    split: Optional[str] = O.train_split(),
    out: Path = O.run_dir(),
    images: Optional[Path] = O.coco_images(),
    backbone: str = typer.Option(_M.backbone, "--backbone", help="Backbone from the registry (stride 32)."),
    weights: str = O.backbone_weights(_M.weights),
    boxes: str = typer.Option(_M.boxes, "--boxes", help="specific (one box per class, Overfeat's) or agnostic."),
    attach: str = typer.Option(_M.attach, "--attach", help="conv: the regressor on the window's convolutional map "
                               "(Overfeat's); fc: on its pooled features."),
    input_size: int = typer.Option(_M.input_size, "--input-size", help="The window's side in pixels (a multiple of 32)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Image scale factors for detection, e.g. '2,1.4,1' "
                                         "(default: chosen from the training boxes' sizes, 3 or more)."),
    offsets: Optional[str] = typer.Option(None, "--offsets", help="Image shifts in pixels for a finer window stride, "
                                          "e.g. '0,16' (default 0)."),
    merge: str = typer.Option(_M.merge, "--merge", help="greedy (Overfeat's merge of boxes across windows and scales) or nms."),
    merge_threshold: float = typer.Option(_M.merge_threshold, "--merge-threshold", help="Greedy merging stops when "
                                          "the closest pair's match score (centre distance / size + 1 - IoU) exceeds this."),
    head_only: bool = typer.Option(False, "--head-only", help="Train only the heads (the trunk stays ImageNet's)."),
    **train: Any,
) -> None:
    """Train Overfeat's window classifier (with a background class) and class-specific box regressor."""
    from rcnn_cli.config import parse_floats, parse_steps
    from rcnn_cli.models.overfeat import train_overfeat

    p, sources = O.replayed(ctx, train["config"])
    train_config = O.pick(p, TrainConfig, lr_steps=parse_steps(p["lr_steps"]))
    offs = parse_floats(p["offsets"], "--offsets")
    model = O.pick_given(p, OverfeatConfig, scales=parse_floats(p["scales"], "--scales") or [],
                         **({"offsets": [int(o) for o in offs]} if offs is not None else {}))
    summary = train_overfeat(dataset, p["split"], out, model, train_config, images=images, resume=p["resume"],
                             sources=sources)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("losses", {}).items())
    console.print(f"trained {summary['iterations']} iterations in {summary['train_time_s']:.0f} s; {losses}",
                  highlight=False)
    console.print(f"scales {summary['model_config']['scales']}; model: {out}/model.safetensors, {out}/config.json",
                  highlight=False)
