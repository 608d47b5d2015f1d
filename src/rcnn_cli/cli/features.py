"""CLI commands: ``rcnn extract-features`` and ``rcnn merge-features`` (library: :mod:`rcnn_cli.rcnn.features`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import app
from rcnn_cli.errors import UserError
from rcnn_cli.log import console
from rcnn_cli.method import DEFAULT_BACKBONE


@app.command("extract-features")
def extract_features_cmd(
    inputs: List[str] = typer.Argument(..., help="A dataset (VOC root with --split, COCO JSON with --images): labelled, "
                                                 "ground truth included as regions; or images, folders, globs, list files."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals file from `rcnn propose`."),
    out: Path = typer.Option(..., "--out", "-o", help="Features HDF5 file (resumable: rerun the same command to continue)."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split of a VOC dataset input."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder of a COCO JSON input."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", help="efficientnet_lite0 | alexnet | vgg16 | resnet50."),
    weights: str = typer.Option("imagenet", "--weights", "-w", help="imagenet | none (random, tests) | PATH (.safetensors, e.g. from `rcnn finetune`)."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Feature layer (alexnet/vgg16: pool5, fc6, fc7; default fc7; resnet50: pool; efficientnet_lite0: pool, or grid = 2x2 cells of the last map, 5120-d, better for box regression)."),
    warp_size: Optional[int] = typer.Option(None, "--warp-size", help="Warp regions to S x S pixels (default: the backbone's native size, 227 AlexNet, 224 others)."),
    padding: int = typer.Option(16, "--padding", help="Context padding around each box, in warped pixels (R-CNN: 16)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Regions per forward pass (batches never span images)."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored feature type: float16 | float32."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present) | cpu | cuda."),
    runtime: str = O.runtime(),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: process every N-th image starting at K (0 <= K < N); join with merge-features."),
    max_proposals: Optional[int] = typer.Option(None, "--max-proposals", help="Use the top-N proposals per image (default: all)."),
    compression: str = typer.Option("none", "--compression", help="HDF5 compression of features: none | lzf | gzip."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the file afresh instead of resuming."),
    checkpoint_seconds: float = typer.Option(20.0, "--checkpoint-seconds", hidden=True, help="Seconds between crash-safe commits."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """R-CNN features of every region (warped with context padding) of every image, into one HDF5 file."""
    from rcnn_cli.data.inputs import is_dataset, load_dataset, resolve_inputs
    from rcnn_cli.rcnn.features import FeatureConfig, run_extract_features

    if len(inputs) == 1 and is_dataset(inputs[0]):
        data = load_dataset(inputs[0], split, images)
    else:
        data = resolve_inputs(inputs, split=split, images=images)
    if len(data) == 0:
        raise UserError("no input images")
    config = FeatureConfig(backbone=backbone, weights=weights, layer=layer, warp_size=warp_size, padding=padding,
                           batch_size=batch_size, dtype=dtype, max_proposals=max_proposals, compression=compression,
                           runtime=runtime, device=device)
    s = run_extract_features(data, proposals, out, config, shard=shard, progress=not no_progress,
                             checkpoint_seconds=checkpoint_seconds, overwrite=overwrite)
    console.print(f"{s['extracted']} image(s) extracted, {s['done_before']} already done, {s['skipped']} skipped; "
                  f"{s['regions']} regions at {s['crops_per_second']:.1f} crops/s -> {out}", highlight=False)


@app.command("merge-features")
def merge_features_cmd(
    inputs: List[Path] = typer.Argument(..., help="Feature files (e.g. the shards of one extraction)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged features file."),
) -> None:
    """Join feature files made with the same settings (refuses to mix settings)."""
    from rcnn_cli.rcnn.features import merge_features

    s = merge_features(inputs, out)
    console.print(f"{s['images']} image(s) from {s['inputs']} file(s) -> {out}"
                  + (f" ({s['duplicates']} duplicate(s) dropped)" if s["duplicates"] else ""), highlight=False)
