"""CLI commands: ``rcnn data make-shapes | info | convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rcnn_cli.cli.app import group
from rcnn_cli.errors import UserError
from rcnn_cli.log import console

data_app = group("data")


def parse_classes(classes: Optional[str]) -> list[str] | None:
    """``"a,b,c"`` -> ``["a", "b", "c"]`` (``None`` stays ``None``)."""
    if not classes:
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"--classes has duplicates: {classes}")
    return names


@data_app.command("make-shapes")
def make_shapes_cmd(
    out: Path = typer.Argument(..., help="Output folder (VOC layout)."),
    train: int = typer.Option(200, "--train", help="Images in the trainval split."),
    test: int = typer.Option(50, "--test", help="Images in the test split."),
    size: int = typer.Option(256, "--image-size", "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    single: bool = typer.Option(False, "--single", help="One object per image, of varied scale and position "
                                "(data for localization: `rcnn localize`, `rcnn evaluate --metric loc`)."),
) -> None:
    """Generate the built-in shapes dataset (circle, square, star, triangle) in VOC layout."""
    from rcnn_cli.data.shapes import make_shapes
    from rcnn_cli.io import write_run_record

    if train < 0 or test < 0 or size < 32:
        raise UserError("--train/--test must be >= 0 and --size >= 32")
    make_shapes(out, train=train, test=test, size=size, seed=seed, single=single)
    write_run_record(out, "rcnn data make-shapes", {"train": train, "test": test, "size": size, "seed": seed,
                                                    "single": single})
    console.print(f"wrote {train} trainval + {test} test images to {out}")


@data_app.command("info")
def info_cmd(
    dataset: Path = typer.Argument(..., help="A dataset: VOC root, COCO instances JSON, YOLO data.yaml or LabelMe folder."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="The split to describe (default: every image)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for a COCO JSON."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class list (default: from the data, sorted)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    max_problems: int = typer.Option(20, "--max-problems", help="Problems listed in the table (all are in --json)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write box-size and aspect-ratio histograms (PNG) here."),
) -> None:
    """Images, objects per class and per image, image sizes and the problems found (bad boxes, missing images)."""
    from rcnn_cli.data.browse import plot_box_statistics
    from rcnn_cli.data.info import dataset_info
    from rcnn_cli.data.inputs import load_dataset

    ds = load_dataset(dataset, split, images, parse_classes(classes))
    info = dataset_info(ds)
    if plot is not None:
        for path in plot_box_statistics(ds, plot):
            console.print(f"wrote {path}", highlight=False)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    out = Console()  # results go to stdout
    out.print(f"[bold]{info['root']}[/] ({info['format']}, split {info['split'] or 'all'}): "
              f"{info['num_images']} images, {info['num_objects']} objects, "
              f"{info['images_without_objects']} images without objects, "
              f"{info['mean_objects_per_image']:.2f} objects per image (at most {info['max_objects_per_image']})")
    if info["split_from"]:
        out.print(f"images from: {', '.join(info['split_from'])}", highlight=False)
    table = Table(title="objects per class")
    table.add_column("class")
    table.add_column("objects", justify="right")
    table.add_column("difficult", justify="right")
    for c in info["classes"]:
        table.add_row(c, str(info["objects_per_class"][c]), str(info["difficult_per_class"][c]))
    out.print(table)
    sizes = list(info["image_sizes"].items())
    shown = ", ".join(f"{s} ({n})" for s, n in sizes[:5]) + (f", ... {len(sizes) - 5} more" if len(sizes) > 5 else "")
    out.print(f"image sizes: {shown or 'unknown'}")
    if info["problems"]:
        counts = ", ".join(f"{n} {p}" for p, n in info["problem_counts"].items())
        ptable = Table(title=f"problems: {counts}")
        for col in ("image", "problem", "detail"):
            ptable.add_column(col)
        for p in info["problems"][:max_problems]:
            detail = p.get("detail") or f"{p['label']} {[round(v, 1) for v in p['box']]}"
            ptable.add_row(p["image_id"], p["problem"], detail)
        out.print(ptable)
        if len(info["problems"]) > max_problems:
            out.print(f"... {len(info['problems']) - max_problems} more (use --json)")
    else:
        out.print("problems: none found")
    out.print(f"policy: {info['bad_box_policy']}")


@data_app.command("convert")
def convert_cmd(
    source: Path = typer.Argument(..., help="A dataset: VOC root, COCO instances JSON, YOLO data.yaml or LabelMe folder."),
    out: Path = typer.Option(..., "--out", "-o", help="COCO: output .json (one <stem>_<split>.json per split); "
                             "VOC, YOLO: a new folder."),
    to: str = typer.Option(..., "--to", help="Target format: coco, voc or yolo."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Convert this split only (default: every split, "
                                        "each kept as a split of the target)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for a COCO JSON source."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class list."),
) -> None:
    """Convert a dataset (VOC, COCO, YOLO or LabelMe) to Pascal VOC layout, COCO instances JSON or YOLO.

    The output must be new: the source and folders holding files are refused, nothing is overwritten.
    """
    from rcnn_cli.data.convert import convert_dataset

    result = convert_dataset(source, out, to, split, images, parse_classes(classes))
    shown = ", ".join(f"{k} {v}" for k, v in result["splits"].items()) or "no splits"
    console.print(f"wrote {result['images']} images as {to} to {', '.join(result['written'])} ({shown})",
                  highlight=False)


@data_app.command("split")
def split_cmd(
    dataset: Path = typer.Argument(..., help="A dataset: VOC root, COCO JSON, YOLO data.yaml or LabelMe folder."),
    source: Optional[str] = typer.Option(None, "--split", "-s", help="The split to divide (default: every image "
                                         "outside an existing test split, which is kept)."),
    val: float = typer.Option(0.2, "--val", help="Share of the images in the validation split."),
    test: float = typer.Option(0.0, "--test", help="Share of the images in a new 'test' split (0: none; refused "
                               "where the dataset has one)."),
    train_name: str = typer.Option("train", "--train-name", help="Name of the split that takes the rest."),
    val_name: str = typer.Option("val", "--val-name", help="Name of the validation split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle (the same seed gives the same splits)."),
) -> None:
    """Write new split files (stratified by each image's rarest class) without touching the images."""
    from rcnn_cli.data.split import assign_splits, divisible, write_splits

    ds, kept = divisible(dataset, source)
    if kept and test > 0:
        raise UserError(f"{dataset} already has a test split ({len(kept)} images): it is kept; drop --test")
    fractions = {train_name: 1.0, val_name: val, **({"test": test} if test > 0 else {})}
    if len(set(fractions)) < len(fractions):
        raise UserError(f"split names must differ (got {', '.join(fractions)})")
    splits = assign_splits(ds, fractions, seed=seed)
    for path in write_splits(dataset, ds, splits):
        console.print(f"wrote {path}", highlight=False)
    if kept:
        console.print(f"kept the test split ({len(kept)} images) as it was; divided the other {len(ds)}",
                      highlight=False)
    console.print(", ".join(f"{k}: {len(v)} images" for k, v in splits.items()), highlight=False)


@data_app.command("show")
def show_cmd(
    dataset: Path = typer.Argument(..., help="A dataset: VOC root, COCO JSON, YOLO data.yaml or LabelMe folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the drawn images."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="The split to show (default: every image)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for a COCO JSON."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Draw only the first N images."),
) -> None:
    """Draw the ground-truth boxes and labels on the images of a dataset."""
    from rcnn_cli.data.browse import show_dataset
    from rcnn_cli.data.inputs import load_dataset

    written = show_dataset(load_dataset(dataset, split, images), out, limit)
    console.print(f"drew {len(written)} images into {out}", highlight=False)
