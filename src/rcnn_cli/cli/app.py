"""The typer application. Each command module registers its commands (or its group) on ``app`` when it is
imported, and it is imported only when one of its commands runs or shows its help: ``rcnn --help`` and
``rcnn --version`` start without torch (:class:`LazyGroup`)."""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from rcnn_cli import __version__
from rcnn_cli.log import setup_logging

#: Every command and command group, in ``rcnn --help``'s order: the module under ``rcnn_cli.cli`` that
#: registers it and its help's first paragraph (a group's help; for a command, a test checks it against
#: the command's own).
COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("detect", "Detect objects with any trained run: streams one JSON line per image as soon as it is done."),
    "evaluate": ("evaluate", "Evaluate detections against ground truth: per-class AP and mAP (VOC07, VOC12 or COCO)."),
    "compare": ("compare", "Train, evaluate and time Overfeat, HOG + SVM, R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1 "
                           "on the same data: the lecture's table."),
    "export": ("detect", "Export a run's CNN for deployment (Faster R-CNN: the whole detector, `rcnn detect --model "
                         "OUT.onnx` runs it; R-CNN: the region network; Fast R-CNN: the trunk; YOLO: the whole "
                         "network)."),
    "plot": ("evaluate", "Draw a run's training curves: losses and learning rate per iteration, validation mAP per "
                         "epoch."),
    "data": ("data", "Datasets: generate the built-in shapes data, inspect, convert."),
    "faster": ("faster", "Faster R-CNN: a region proposal network and a Fast R-CNN head, trained jointly."),
    "fast": ("fast", "Fast R-CNN: RoI pooling over one forward pass per image, trained end to end."),
    "yolo": ("yolo", "YOLO v1: one regression from the image to an S x S grid of boxes and class scores."),
    "localize": ("localize", "Classification + localization: a box regression head beside the classifier (K "
                             "boxes)."),
    "overfeat": ("overfeat", "Overfeat: a window classifier and box regressor run densely (FC layers as "
                             "convolutions), several scales, boxes merged greedily."),
    "pipeline": ("rcnn", "Run every R-CNN stage: propose, extract-features, optional finetune, train-svm, train-bbox, "
                         "detect, evaluate."),
    "propose": ("propose", "Region proposals for every image, stored in one HDF5 file (crash-safe, resumable)."),
    "merge-proposals": ("propose", "Join proposals files made with the same settings (refuses to mix settings)."),
    "proposals": ("propose", "Inspect region proposals (recall, MABO)."),
    "extract-features": ("features", "R-CNN features of every region (warped with context padding) of every image, "
                                     "into one HDF5 file."),
    "merge-features": ("features", "Join feature files made with the same settings (refuses to mix settings)."),
    "finetune": ("rcnn", "Fine-tune a backbone on warped regions with an N+1-way classifier (R-CNN's step 2)."),
    "train-svm": ("rcnn", "Train one linear SVM per class with hard-negative mining (R-CNN's step 3)."),
    "train-bbox": ("rcnn", "Fit class-specific bounding-box ridge regressors (R-CNN's box regression)."),
    "export-backbone": ("rcnn", "Export a trained Fast/Faster R-CNN's backbone as --weights for extract-features or "
                                "finetune."),
}


def _short(text: str, limit: int) -> str:
    """The first sentence of ``text``, cut at a word to at most ``limit`` characters (``...`` when cut)."""
    first = text.split(". ")[0].rstrip(".")
    if len(first) <= limit:
        return first + ("." if text.rstrip().endswith(".") or ". " in text else "")
    words, out = first.split(), ""
    for word in words:
        if len(out) + len(word) + (1 if out else 0) + 3 > limit:
            break
        out = f"{out} {word}" if out else word
    return out + "..."


class LazyGroup(TyperGroup):
    """The root command: it lists :data:`COMMANDS` without importing them and imports a command's module
    when that command is asked for. ``commands`` (every command, e.g. for a test walking them all)
    imports every module."""

    @property
    def commands(self) -> dict:
        for name in COMMANDS:
            self._load(name)
        return self._commands

    @commands.setter
    def commands(self, value: dict) -> None:
        self._commands = value

    def _load(self, name: str) -> None:
        if name not in self._commands and name in COMMANDS:
            importlib.import_module(f"rcnn_cli.cli.{COMMANDS[name][0]}")
            built = typer.main.get_command(app)
            self._commands.update({k: v for k, v in built._commands.items() if k not in self._commands})

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, name: str):
        self._load(name)
        return self._commands.get(name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        with formatter.section("Commands"):
            formatter.write_dl([(name, _short(line, limit)) for name, (_, line) in COMMANDS.items()])


SETTINGS = dict(rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                context_settings={"help_option_names": ["-h", "--help"]})

app = typer.Typer(cls=LazyGroup, help="CNN object detection: R-CNN, Fast R-CNN, Faster R-CNN, YOLO v1, Overfeat and "
                  "localization, stage by stage.", **SETTINGS)


def group(name: str) -> typer.Typer:
    """The command group ``rcnn NAME ...`` (registered on ``app``; its help is its line in :data:`COMMANDS`)."""
    sub = typer.Typer(help=COMMANDS[name][1], **SETTINGS)
    app.add_typer(sub, name=name)
    return sub


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
