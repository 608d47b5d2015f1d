"""The typer application and its command groups. Command modules register on these objects."""

from __future__ import annotations

import typer

from rcnn_cli import __version__
from rcnn_cli.log import setup_logging

SETTINGS = dict(rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                context_settings={"help_option_names": ["-h", "--help"]})

app = typer.Typer(help="CNN object detection: R-CNN, Fast R-CNN, Faster R-CNN, YOLO v1, Overfeat and localization, stage by stage.", **SETTINGS)
data_app = typer.Typer(help="Datasets: generate the built-in shapes data, inspect, convert.", **SETTINGS)
proposals_app = typer.Typer(help="Inspect region proposals (recall, MABO).", **SETTINGS)
fast_app = typer.Typer(help="Fast R-CNN: RoI pooling over one forward pass per image, trained end to end.", **SETTINGS)
faster_app = typer.Typer(help="Faster R-CNN: a region proposal network and a Fast R-CNN head, trained jointly.", **SETTINGS)
app.add_typer(data_app, name="data")
app.add_typer(proposals_app, name="proposals")
app.add_typer(fast_app, name="fast")
yolo_app = typer.Typer(help="YOLO v1: one regression from the image to an S x S grid of boxes and class scores.", **SETTINGS)
app.add_typer(faster_app, name="faster")
app.add_typer(yolo_app, name="yolo")
localize_app = typer.Typer(help="Classification + localization: a box regression head beside the classifier (K boxes).", **SETTINGS)
app.add_typer(localize_app, name="localize")
overfeat_app = typer.Typer(help="Overfeat: a window classifier and box regressor run densely (FC layers as convolutions), "
                           "several scales, boxes merged greedily.", **SETTINGS)
app.add_typer(overfeat_app, name="overfeat")

state = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging and full tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    strict_images: bool = typer.Option(False, "--strict-images", help="Refuse truncated images (default: decode what is there, with a warning)."),
) -> None:
    from rcnn_cli.data.images import set_strict_images

    state["verbose"] = verbose
    setup_logging(verbose)
    if strict_images:
        set_strict_images(True)
