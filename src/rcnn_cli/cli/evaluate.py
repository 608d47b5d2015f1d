"""CLI command: ``rcnn evaluate`` (library: :mod:`rcnn_cli.evaluation`, :mod:`rcnn_cli.io.detections`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from rcnn_cli.cli.app import app
from rcnn_cli.errors import UserError


class Metric(str, Enum):
    voc07 = "voc07"
    voc12 = "voc12"
    coco = "coco"
    loc = "loc"


@app.command("evaluate")
def evaluate_command(
    dataset: Path = typer.Argument(..., help="Ground truth: a VOC root (with --split) or a COCO instances JSON."),
    detections: str = typer.Option(..., "--detections", "-d",
                                   help="Detections: JSON lines (what `rcnn detect` writes), a COCO results JSON, "
                                        "a folder or file of VOC comp4_det_<split>_<class>.txt, or '-' for stdin."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split of a VOC dataset (ImageSets/Main/<split>.txt)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a COCO dataset (not needed to evaluate)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class list (default: from the data)."),
    metric: Metric = typer.Option(Metric.voc07, "--metric", case_sensitive=False,
                                  help="voc07: 11-point AP (VOC devkit); voc12: area under the PR envelope; "
                                       "coco: AP@[.5:.95], AP50, AP75, APs/m/l via pycocotools; loc: ILSVRC "
                                       "localization and classification errors, top-1 and top-5, and with the class known."),
    iou: Optional[float] = typer.Option(None, "--iou", help="IoU threshold for voc07/voc12 (default 0.5, devkit's >=)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON (AP as fractions) here ('-': stdout, the table then goes to stderr)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write precision/recall PNGs (one per class + overview) here."),
    ignore_unknown: bool = typer.Option(False, "--ignore-unknown",
                                        help="Warn about and skip detections of images/classes not in the split "
                                             "(default: error)."),
    analysis: Optional[Path] = typer.Option(None, "--analysis", help="Write the error analysis here: TIDE error types "
                                            "with their dAP, confusion matrix, per-class counts, the worst images, "
                                            "index.html."),
    score_threshold: float = typer.Option(0.3, "--score-threshold", help="--analysis: detections at least this "
                                          "confident enter the confusion matrix and the per-class counts."),
    worst: int = typer.Option(8, "--worst", help="--analysis: how many of the images with the most errors to draw."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="voc07/voc12: also the mAP's 95 %% interval over this many "
                                  "resamples of the test images (e.g. 1000): how much of it is the split's luck."),
    against: Optional[str] = typer.Option(None, "--against", help="voc07/voc12: a second detection set (same forms "
                                          "as --detections) compared on the same resamples: the interval of the "
                                          "difference (1000 resamples unless --bootstrap)."),
    seed: int = typer.Option(0, "--seed", help="--bootstrap/--against: the resampling's random seed."),
) -> None:
    """Evaluate detections against ground truth: per-class AP and mAP (VOC07, VOC12 or COCO).

    Example: rcnn detect imgs/ --model M | rcnn evaluate data/voc --split test --detections -
    """
    from rcnn_cli.data.inputs import dataset_classes, load_dataset
    from rcnn_cli.data.voc import is_voc_root
    from rcnn_cli.io.detections import read_detections
    from rcnn_cli.evaluation import bootstrap_lines, evaluate, json_summary, results_table
    from rcnn_cli.io import jsonable, write_json, write_run_record
    from rcnn_cli.log import logger

    if is_voc_root(dataset) and not split:
        raise UserError(f"{dataset} is a VOC dataset: say which split to evaluate with --split (e.g. --split test)")
    if metric is Metric.loc and (plot is not None or analysis is not None):
        raise UserError("--plot and --analysis go with the AP metrics (voc07, voc12, coco), not --metric loc")
    if metric is Metric.coco and iou is not None:
        logger.warning("--iou is ignored by --metric coco (it averages IoU 0.50:0.95)")
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    # The dataset's whole class list (every split): a class absent from this split is still known.
    ds = load_dataset(dataset, split, images, class_list or dataset_classes(dataset, images))
    dets = read_detections(detections, ds, ignore_unknown=ignore_unknown)
    other = read_detections(against, ds, ignore_unknown=ignore_unknown) if against is not None else None
    result = evaluate(ds, dets, metric=metric.value, iou=0.5 if iou is None else iou,
                      ignore_unknown=ignore_unknown, curves=plot is not None, bootstrap=bootstrap, seed=seed,
                      against=other)
    to_stdout = json_out is not None and str(json_out) == "-"
    console = Console(stderr=to_stdout)  # stdout, unless the JSON goes there
    console.print(results_table(result))
    for line in bootstrap_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    if to_stdout:
        import json

        print(json.dumps(jsonable(json_summary(result)), indent=2))
    elif json_out is not None:
        write_json(json_out, json_summary(result))
        write_run_record(json_out, "evaluate", {
            "dataset": str(dataset), "split": split, "detections": detections, "metric": metric.value,
            "iou": result.get("iou"), "classes": ds.classes, "ignore_unknown": ignore_unknown,
            "bootstrap": bootstrap, "against": against, "seed": seed})
        logger.info("wrote %s", json_out)
    if analysis is not None:
        from rcnn_cli.evaluation.report import write_analysis

        rep = write_analysis(ds, dets, analysis, metric="voc07" if metric is Metric.voc07 else "voc12",
                             iou=0.5 if iou is None else iou, score_threshold=score_threshold, worst=worst)
        b = rep["breakdown"]
        logger.info("error analysis (dAP, mAP points): %s -> %s/index.html", ", ".join(
            f"{k} {100 * v:.1f}" for k, v in b["dAP"].items()), analysis)
    if plot is not None:
        from rcnn_cli.visualize import plot_precision_recall

        name = "COCO (precision at IoU 0.5)" if metric is Metric.coco else f"{metric.value.upper()} IoU {result['iou']:g}"
        written = plot_precision_recall(result["curves"], result["AP"], plot, title=name, classes=ds.classes)
        logger.info("wrote %d plots to %s", len(written), plot)


@app.command("plot")
def plot_command(
    run: Path = typer.Argument(..., help="A training run directory (its metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The PNG to write (default: RUN/curves.png)."),
) -> None:
    """Draw a run's training curves: losses and learning rate per iteration, validation mAP per epoch."""
    from rcnn_cli.log import console
    from rcnn_cli.visualize import plot_training

    path = plot_training(run / "metrics.jsonl", out or run / "curves.png")
    console.print(f"curves: {path}", highlight=False)
