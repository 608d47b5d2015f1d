"""Options shared by several commands: each defined once, its default taken from the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rcnn_cli.detector import REGRESSED_NMS, DetectConfig

_D = DetectConfig()


def score_threshold(default: Optional[float] = None) -> Optional[float]:
    return typer.Option(default, "--score-threshold", help=f"Drop detections scoring below this (default: the run's, "
                        f"{_D.score_threshold}).")


def nms(default: Optional[float] = None) -> Optional[float]:
    return typer.Option(default, "--nms", help=f"Per-class NMS IoU threshold (default: the run's; R-CNN {_D.nms}, "
                        f"Fast and Faster R-CNN {REGRESSED_NMS}, which keeps touching objects apart).")


def top_k(default: Optional[int] = None) -> Optional[int]:
    return typer.Option(default, "--top-k", help=f"Detections kept per image (default: the run's, {_D.top_k}).")


def runtime(default: str = "torch") -> str:
    return typer.Option(default, "--runtime", help="The CNN's runtime: torch (channels_last), onnxruntime, openvino, "
                        "or auto (the fastest installed); the ONNX graph is built once and cached.")


def device() -> str:
    return typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")


def progress() -> bool:
    return typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")


def seed() -> int:
    return typer.Option(0, "--seed", help="Random seed (data order, sampling, new layers).")


def dataset_argument() -> Path:
    return typer.Argument(..., help="A dataset: VOC root, COCO instances JSON, YOLO data.yaml or LabelMe folder.")


def train_split() -> Optional[str]:
    return typer.Option(None, "--split", "-s", help="Training split (default: trainval, else train, on a dataset "
                        "that defines splits; every image on one that defines none).")


def run_dir() -> Path:
    return typer.Option(..., "--out", "-o", help="Run directory (model.safetensors, config.json, checkpoint/, metrics.jsonl).")


def coco_images() -> Optional[Path]:
    return typer.Option(None, "--images", help="Image folder for a COCO JSON.")


def backbone_weights(default: str = "imagenet") -> str:
    return typer.Option(default, "--weights", help="Backbone initialisation: imagenet, none or a .safetensors file.")


def detect_config(score_threshold: Optional[float], nms: Optional[float], top_k: Optional[int]) -> dict[str, Any]:
    """The test-time settings given (``None``: the run's own), checked now (a bad value is a one-line error)."""
    given = {"score_threshold": score_threshold, "nms": nms, "top_k": top_k}
    _D.updated(**given)
    return given


# ---------------------------------------------------------------------------- replaying a recorded run

#: Parameters that a replay never takes from the record: where the data and the run are.
_NOT_REPLAYED = {"dataset", "out", "config", "resume", "progress", "images", "proposals", "val_proposals"}

#: Parameters that change how a resumed run is carried out, never what it computes.
_FREE_ON_RESUME = {"device", "workers", "progress", "log_every", "tensorboard", "max_iters"}


def config_file() -> Optional[Path]:
    return typer.Option(None, "--config", help="Replay a recorded run: its config.json (or a pipeline's "
                        "metrics.json.config.json, or a YAML/JSON file of name: value); flags given beside it win.")


def _read_mapping(path: Path) -> Any:
    from rcnn_cli.errors import UserError
    from rcnn_cli.io.files import read_json

    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_json(path)
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None


def read_recorded(path: Path) -> dict[str, Any]:
    """The flat settings of a recorded run (``model`` over ``train`` of a run directory's
    ``config.json``, with the training split; the ``config`` of a ``*.config.json`` record; or a
    plain mapping, JSON or YAML)."""
    from rcnn_cli.errors import UserError

    record = _read_mapping(path)
    if not isinstance(record, dict):
        raise UserError(f"{path}: a recorded configuration must be a mapping of settings")
    if isinstance(record.get("model"), dict) and "kind" in record:
        flat = {**(record.get("train") or {}), **record["model"]}
        trained_on = record["model"].get("trained_on")
        if isinstance(trained_on, dict) and "split" in trained_on:
            flat.setdefault("split", trained_on["split"])
        return flat
    if isinstance(record.get("config"), dict):
        inner = record["config"]
        return {**(inner.get("train") or {}), **inner["model"]} if isinstance(inner.get("model"), dict) else inner
    return record


def _record(path: Path) -> dict[str, Any]:
    """The mapping in ``path``, or ``{}`` when it is missing or unreadable (callers that need it report it)."""
    try:
        record = _read_mapping(path) if path.is_file() else {}
    except Exception:  # noqa: BLE001 - read_recorded reports it
        return {}
    return record if isinstance(record, dict) else {}


def _is_run_record(path: Path) -> bool:
    record = _record(path)
    return "kind" in record or isinstance(record.get("config"), dict)


def _check_known(config: Path, recorded: dict[str, Any], known: set[str]) -> None:
    """A user's settings file naming a setting the command does not have is a one-line error."""
    import difflib

    from rcnn_cli.errors import UserError

    for key in recorded:
        if key not in known:
            near = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"{config}: unknown setting '{key}'{hint}; nothing was run")


def _as_option(recorded: Any, current: Any) -> Any:
    """A recorded value in the form the option takes (lists become ``"a,b,c"`` for text options)."""
    if isinstance(recorded, (list, tuple)) and (current is None or isinstance(current, str)):
        return ",".join(str(v) for v in recorded)
    return recorded


def _same(given: Any, recorded: Any) -> bool:
    """Whether a flag's value equals the recorded one (``"8,11"`` and ``[8, 11]``, ``"30m"`` and 1800)."""
    from rcnn_cli.config import parse_duration

    if given == recorded or str(given) == str(_as_option(recorded, given)):
        return True
    for parse in (float, parse_duration):
        try:
            return parse(given) == parse(recorded)
        except Exception:  # noqa: BLE001 - not numbers, not durations
            continue
    return False


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def resumed(ctx: typer.Context, record_path: Path
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """``--resume``: every setting read from the run's record (fitted or given, the time budget's
    plan with the checkpoint); a flag beside it that would change the run is a one-line error."""
    from rcnn_cli.errors import UserError
    from rcnn_cli.io.files import read_json

    values = dict(ctx.params)
    recorded = read_recorded(record_path)
    recorded_sources = read_json(record_path).get("sources") or {}
    sources = {}
    for name in list(values):
        if name in _NOT_REPLAYED or name not in recorded or (name in _FREE_ON_RESUME and _given(ctx, name)):
            sources[name] = "command line" if _given(ctx, name) else "default"
            continue
        if name not in _FREE_ON_RESUME and _given(ctx, name) and not _same(values[name], recorded[name]):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {values[name]}: the run in {record_path.parent} was recorded with "
                            f"{_as_option(recorded[name], values[name])}, and --resume continues it exactly (drop "
                            f"{flag}, or train into a new --out)")
        values[name] = _as_option(recorded[name], values[name])
        sources[name] = recorded_sources.get(name, f"recorded in {record_path}")
    return values, sources


def replayed(ctx: typer.Context, config: Optional[Path]
             ) -> tuple[dict[str, Any], dict[str, str]]:
    """The command's parameters with every one not given on the command line taken from the recorded
    ``config`` (parameters are named as the configurations' fields), and where each value came from. With
    ``--resume`` and a run record in ``--out``: :func:`resumed`."""
    from rcnn_cli.errors import UserError

    values, sources = dict(ctx.params), {}
    out = Path(values["out"]) if values.get("out") is not None else None
    record_path = out / "config.json" if out is not None else None
    if "resume" in values and not values["resume"] and out is not None and out.exists() and \
            (not out.is_dir() or any(out.iterdir())):
        what = " (a run: --resume continues it)" if "kind" in _record(record_path) else ""
        raise UserError(f"--out {out} already holds files{what}: choose a new folder; nothing was written")
    if values.get("resume") and record_path is not None and record_path.is_file():
        if config is not None:
            raise UserError("--resume continues the run recorded in --out; --config starts a new one (give one)")
        return resumed(ctx, record_path)
    recorded = read_recorded(config) if config is not None else {}
    if config is not None and not _is_run_record(config):
        _check_known(config, recorded, set(values))
    for name in list(values):
        if _given(ctx, name):
            sources[name] = "command line"
        elif name not in _NOT_REPLAYED and recorded.get(name) is not None:
            values[name] = _as_option(recorded[name], values[name])
            sources[name] = f"config {config}"
        else:
            sources[name] = "default"
    return values, sources


def pick_given(values: dict[str, Any], cls: type, **fixed: Any) -> Any:
    """``cls`` from the parsed parameters named as its fields and not ``None`` (``None``: not given, the
    class's default), with ``fixed`` over them: a model configuration from a command's options."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and k not in fixed and v is not None}, **fixed)


def pick(values: dict[str, Any], cls: type, **fixed: Any) -> Any:
    """``cls(**values it has fields for, **fixed)``: a configuration dataclass from parsed parameters."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and k not in fixed}, **fixed)


# ---------------------------------------------------------------------------- the training options

def _training(d: Any) -> list[tuple[str, Any, Any]]:
    """``(name, type, typer option)`` of the settings every training command shares, with the
    command's :class:`rcnn_cli.engine.TrainConfig` defaults ``d``."""
    return [
        ("epochs", int, typer.Option(d.epochs, "--epochs", help="Training epochs.")),
        ("lr", float, typer.Option(d.lr, "--lr", help="SGD learning rate (for the minibatch of one process).")),
        ("lr_steps", Optional[str], typer.Option(None, "--lr-steps", help="Epochs at which the learning rate is "
                                                 "multiplied by --lr-gamma, e.g. 8,11 (default: 2/3 and 11/12 of --epochs).")),
        ("lr_gamma", float, typer.Option(d.lr_gamma, "--lr-gamma", help="Learning-rate decay factor at each step.")),
        ("momentum", float, typer.Option(d.momentum, "--momentum", help="SGD momentum.")),
        ("weight_decay", float, typer.Option(d.weight_decay, "--weight-decay", "--wd", help="SGD weight decay.")),
        ("warmup_iters", int, typer.Option(d.warmup_iters, "--warmup-iters", help="Linear warmup iterations.")),
        ("batch_size", int, typer.Option(d.batch_size, "--batch-size", "-b", help="Images per minibatch (per process "
                                         "under torchrun).")),
        ("amp", bool, typer.Option(False, "--amp", help="Mixed precision (CUDA only; ignored with a warning on the CPU).")),
        ("resume", bool, typer.Option(False, "--resume", help="Continue exactly from the last checkpoint in --out.")),
        ("seed", int, seed()),
        ("device", str, device()),
        ("workers", int, typer.Option(d.workers, "--workers", "-j", help="Data-loading worker processes.")),
        ("max_iters", Optional[int], typer.Option(None, "--max-iters", help="Stop after this many iterations (quick runs).")),
        ("log_every", int, typer.Option(d.log_every, "--log-every", help="Log every N iterations (metrics.jsonl; a "
                                        "plain line with an ETA when stderr is a file).")),
        ("val_split", Optional[str], typer.Option(None, "--val-split", help="Report mAP (voc12) on this split after every "
                                                  "epoch; the best epoch's weights are kept in OUT/best/.")),
        ("patience", Optional[int], typer.Option(None, "--patience", help="With --val-split: stop after this many epochs "
                                                 "without a better validation mAP.")),
        ("tensorboard", bool, typer.Option(False, "--tensorboard", help="Also write TensorBoard events into "
                                           "OUT/tensorboard (needs the tensorboard package).")),
        ("time_budget", Optional[str], typer.Option(None, "--time-budget", help="At most this much training "
                                                    "time, e.g. 20m or 2h: the schedule's epochs (and default lr steps) "
                                                    "cut to what fits at the speed of the first iterations (a ceiling: "
                                                    "give --epochs to train longer).")),
        ("lr_schedule", str, typer.Option(d.lr_schedule, "--lr-schedule", help="step (x --lr-gamma at --lr-steps), "
                                          "cosine (from --lr down to --lr x --lr-final, after the warmup) or auto (cosine "
                                          "with --ema where --time-budget cuts the schedule, else step without it).")),
        ("lr_final", float, typer.Option(d.lr_final, "--lr-final", help="With --lr-schedule cosine: the last "
                                         "learning rate as a fraction of --lr.")),
        ("ema", float, typer.Option(d.ema, "--ema", help="Keep a moving average of the weights with this decay "
                                    "(e.g. 0.999; 0: none); validation and the saved model use it (with --lr-schedule "
                                    "auto: only where the budget cuts the schedule).")),
        ("compile", bool, typer.Option(False, "--compile", help="torch.compile the training forward (first "
                                       "iterations compile; README: measured speed).")),
        ("progress", bool, progress()),
        ("config", Optional[Path], config_file()),
    ]


def training_options(defaults: Any):
    """Decorator: append the shared training options to a command (it takes them as ``**train``)."""
    import functools
    import inspect

    def decorate(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)
                 for name, typ, opt in _training(defaults) if name not in {p.name for p in own}]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            return fn(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=own + extra)
        return command

    return decorate
