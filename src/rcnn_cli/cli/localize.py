"""CLI command: ``rcnn localize train`` (library: :mod:`rcnn_cli.models.localizer`); test time is
``rcnn detect --model RUN`` and ``rcnn evaluate --metric loc``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import group
from rcnn_cli.engine import TrainConfig
from rcnn_cli.log import console
from rcnn_cli.models.localizer import TRAIN_DEFAULTS, LocalizerConfig

localize_app = group("localize")

_M, _T = LocalizerConfig(), TrainConfig(**TRAIN_DEFAULTS)


@localize_app.command("train")
@O.training_options(_T)
def train_cmd(
    ctx: typer.Context,
    dataset: Path = O.dataset_argument(),
    split: Optional[str] = O.train_split(),
    out: Path = O.run_dir(),
    images: Optional[Path] = O.coco_images(),
    backbone: str = typer.Option(_M.backbone, "--backbone", help="Backbone from the registry."),
    weights: str = O.backbone_weights(_M.weights),
    boxes: str = typer.Option(_M.boxes, "--boxes", help="agnostic (4 numbers per box) or specific (one box per class)."),
    attach: str = typer.Option(_M.attach, "--attach", help="fc: on the pooled features (DeepPose, R-CNN); conv: on the "
                               "last convolutional map (Overfeat, VGG)."),
    k: int = typer.Option(_M.k, "--k", help="Boxes per image: the image's K largest objects (fewer: the empty slots "
                          "are left out of the loss)."),
    input_size: int = typer.Option(_M.input_size, "--input-size", help="Square input side (a multiple of 32)."),
    head_only: bool = typer.Option(False, "--head-only", help="Train only the heads on frozen, cached features "
                                   "(seconds on a CPU); default: fine-tune end to end."),
    **train: Any,
) -> None:
    """Train classification + localization by regression (the lecture's four steps)."""
    from rcnn_cli.config import parse_steps
    from rcnn_cli.models.localizer import train_localizer

    p, sources = O.replayed(ctx, train["config"])
    train_config = O.pick(p, TrainConfig, lr_steps=parse_steps(p["lr_steps"]))
    summary = train_localizer(dataset, p["split"], out, O.pick_given(p, LocalizerConfig), train_config, images=images,
                              resume=p["resume"], sources=sources)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("losses", {}).items())
    console.print(f"trained {summary['iterations']} iterations in {summary['train_time_s']:.0f} s; {losses}",
                  highlight=False)
    console.print(f"model: {out}/model.safetensors, {out}/config.json", highlight=False)
