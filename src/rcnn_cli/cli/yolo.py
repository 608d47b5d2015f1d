"""CLI commands: ``rcnn yolo train`` and ``rcnn yolo ceiling`` (library: :mod:`rcnn_cli.models.yolo`);
detection is ``rcnn detect --model RUN``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import group
from rcnn_cli.engine import TrainConfig
from rcnn_cli.log import console
from rcnn_cli.models.yolo import TRAIN_DEFAULTS, YOLOConfig

yolo_app = group("yolo")

_M, _T = YOLOConfig(), TrainConfig(**TRAIN_DEFAULTS)


@yolo_app.command("train")
@O.training_options(_T)
def train_cmd(
    ctx: typer.Context,
    dataset: Path = O.dataset_argument(),
    split: Optional[str] = O.train_split(),
    out: Path = O.run_dir(),
    images: Optional[Path] = O.coco_images(),
    backbone: str = typer.Option(_M.backbone, "--backbone", help="Backbone from the registry (its whole stride-32 convolutional part)."),
    weights: str = O.backbone_weights(_M.weights),
    grid: int = typer.Option(_M.grid, "--grid", help="S: the image is divided into S x S cells."),
    boxes_per_cell: int = typer.Option(_M.boxes_per_cell, "--boxes-per-cell", help="B: boxes each cell predicts."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Square input side: 64 x grid (default, the "
                                             "paper's 448; a stride-2 layer on the 14x14 map) or 32 x grid (4x cheaper)."),
    head: str = typer.Option(_M.head, "--head", help="conv: two 1x1 convolutions per cell (trains in few epochs on a "
                             "CPU); fc: the paper's two fully connected layers over the whole grid."),
    hidden: int = typer.Option(_M.hidden, "--hidden", help="Units (channels) of the head's hidden layer."),
    lambda_coord: float = typer.Option(_M.lambda_coord, "--lambda-coord", help="Weight of the coordinate errors."),
    lambda_noobj: float = typer.Option(_M.lambda_noobj, "--lambda-noobj", help="Weight of the confidence error of predictors without an object."),
    jitter: float = typer.Option(_M.jitter, "--jitter", help="Random scaling and translation, as a fraction of the image size."),
    exposure: float = typer.Option(_M.exposure, "--exposure", help="Exposure and saturation scaled by up to this factor."),
    **train: Any,
) -> None:
    """Train YOLO v1 (the paper's sum-squared loss, five terms) on a labelled split.

    Works under `torchrun --standalone --nproc_per_node N --no-python rcnn yolo train ...` (DDP).
    """
    from rcnn_cli.config import parse_steps
    from rcnn_cli.models.yolo import train_yolo
    from rcnn_cli.device import dist_info

    p, sources = O.replayed(ctx, train["config"])
    train_config = O.pick(p, TrainConfig, lr_steps=parse_steps(p["lr_steps"]))
    model = O.pick_given(p, YOLOConfig)
    summary = train_yolo(dataset, p["split"], out, model, train_config, images=images, val_split=p["val_split"],
                         resume=p["resume"], sources=sources)
    if dist_info()[0] != 0:
        return
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("losses", {}).items())
    console.print(f"trained {summary['iterations']} iterations in {summary['train_time_s']:.0f} s "
                  f"({summary.get('images_per_s') or 0:.2f} images/s); {losses}", highlight=False)
    console.print(f"model: {out}/model.safetensors, {out}/config.json", highlight=False)


@yolo_app.command("ceiling")
def ceiling_cmd(
    dataset: Path = O.dataset_argument(),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split to measure."),
    images: Optional[Path] = O.coco_images(),
    grid: int = typer.Option(_M.grid, "--grid", help="S (also measured: 7, 14 and a few others)."),
    boxes_per_cell: int = typer.Option(_M.boxes_per_cell, "--boxes-per-cell", help="B (also measured: 1, 2, 3)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The share of ground-truth boxes an S x S grid with B boxes per cell can represent at all."""
    from rich.table import Table

    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.models.yolo import grid_ceiling

    ds = load_dataset(dataset, split, images)
    grids = sorted({grid, 5, 7, 10, 14, 20})
    rows = grid_ceiling(ds, grids, sorted({boxes_per_cell, 1, 2, 3}))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"YOLO grid ceiling: {dataset} {split or ''} ({rows[0]['boxes'] if rows else 0} boxes)")
    for col in ["S", "B", "all", *ds.classes]:
        table.add_column(col, justify="right")
    pct = lambda v: "-" if math.isnan(v) else f"{100 * v:.1f}%"  # noqa: E731
    for r in rows:
        mark = " *" if (r["grid"], r["boxes_per_cell"]) == (grid, boxes_per_cell) else ""
        table.add_row(f"{r['grid']}{mark}", str(r["boxes_per_cell"]), pct(r["total"]),
                      *[pct(r["per_class"][c]) for c in ds.classes])
    console.print(table)
