"""CLI command: ``rcnn compare`` (library: :mod:`rcnn_cli.workflows.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import app
from rcnn_cli.log import console
from rcnn_cli.method import DEFAULT_BACKBONE


@app.command("compare")
def compare_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="VOC root or COCO JSON; omitted: the built-in shapes data (generated into OUT/data)."),
    train_split: Optional[str] = typer.Option(None, "--train-split", help="Training split (default: trainval, else train)."),
    test_split: str = typer.Option("test", "--test-split", help="Test split (evaluation and timing)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for every run, compare.json, compare.md and compare.png (reused on rerun)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a COCO dataset."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Backbone of every CNN detector (rcnn_cli.backbones)."),
    methods: str = typer.Option("overfeat,hog,rcnn,fast,faster,yolo", "--methods", help="Comma-separated subset of overfeat, hog (HOG + SVM), rcnn, fast, faster, yolo."),
    budget: str = typer.Option("quick", "--budget", help="quick (2-core CPU, minutes: fewer proposals, smaller sizes, short schedules) or full (the papers' settings)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of data generation, training and sampling."),
    timing_images: Optional[int] = typer.Option(None, "--timing-images", help="Test images timed per method (default: quick 6, full 10)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one budget setting, e.g. --set fast.epochs=8 (repeatable; recorded in the output)."),
    runtime: str = O.runtime(),
    progress: bool = O.progress(),
) -> None:
    """Train, evaluate and time Overfeat, HOG + SVM, R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1 on the same data: the lecture's table.

    Same backbone for the CNN detectors, the same proposals files for HOG + SVM, R-CNN and Fast R-CNN; finished stages in
    OUT are reused when their configuration matches. Writes OUT/compare.json, compare.md, compare.png.
    """
    from rcnn_cli.workflows.compare import parse_methods, parse_set, print_table, run_compare

    chosen = parse_methods(methods)
    overrides = parse_set(set_)
    report = run_compare(dataset, train_split, test_split, out, backbone=backbone, methods=chosen, budget=budget,
                         device=device, seed=seed, progress=progress, images=images, timing_images=timing_images,
                         overrides=overrides, command="rcnn compare", runtime=runtime)
    print_table(report)
    console.print(f"written: {out}/compare.json, {out}/compare.md, {out}/compare.png", highlight=False)
