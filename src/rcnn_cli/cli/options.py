"""Options shared by several commands: each defined once, its default taken from the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rcnn_cli.detector import DetectConfig

_D = DetectConfig()


def score_threshold() -> float:
    return typer.Option(_D.score_threshold, "--score-threshold", help="Drop detections scoring below this.")


def nms() -> float:
    return typer.Option(_D.nms, "--nms", help="Per-class NMS IoU threshold (0.5 keeps touching objects apart).")


def top_k() -> int:
    return typer.Option(_D.top_k, "--top-k", help="Detections kept per image.")


def runtime() -> str:
    return typer.Option("torch", "--runtime", help="The CNN's runtime: torch (channels_last), onnxruntime, openvino, "
                        "or auto (the fastest installed); the ONNX graph is built once and cached.")


def device() -> str:
    return typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")


def progress() -> bool:
    return typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")


def seed() -> int:
    return typer.Option(0, "--seed", help="Random seed (data order, sampling, new layers).")


def detect_config(score_threshold: float, nms: float, top_k: int) -> DetectConfig:
    return DetectConfig(score_threshold=score_threshold, nms=nms, top_k=top_k)


# ---------------------------------------------------------------------------- replaying a recorded run

#: Parameters that a replay never takes from the record: where the data and the run are.
_NOT_REPLAYED = {"dataset", "out", "config", "resume", "progress", "images", "proposals", "val_proposals"}


def config_file() -> Optional[Path]:
    return typer.Option(None, "--config", help="Replay a recorded run: its config.json (or a pipeline's "
                        "metrics.json.config.json, or a YAML/JSON file of name: value); flags given beside it win.")


def read_recorded(path: Path) -> dict[str, Any]:
    """The flat settings of a recorded run (``model`` over ``train`` of a run directory's
    ``config.json``; the ``config`` of a ``*.config.json`` record; or a plain mapping, JSON or YAML)."""
    from rcnn_cli.errors import UserError
    from rcnn_cli.io.files import read_json

    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            record = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: file not found") from None
        except yaml.YAMLError as e:
            raise UserError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    else:
        record = read_json(path)
    if not isinstance(record, dict):
        raise UserError(f"{path}: a recorded configuration must be a mapping of settings")
    if isinstance(record.get("model"), dict) and "kind" in record:
        return {**(record.get("train") or {}), **record["model"]}
    if isinstance(record.get("config"), dict):
        inner = record["config"]
        return {**(inner.get("train") or {}), **inner["model"]} if isinstance(inner.get("model"), dict) else inner
    return record


def _as_option(recorded: Any, current: Any) -> Any:
    """A recorded value in the form the option takes (lists become ``"a,b,c"`` for text options)."""
    if isinstance(recorded, (list, tuple)) and (current is None or isinstance(current, str)):
        return ",".join(str(v) for v in recorded)
    return recorded


def replayed(ctx: typer.Context, config: Optional[Path], aliases: dict[str, str] | None = None
             ) -> tuple[dict[str, Any], dict[str, str]]:
    """The command's parameters with every one not given on the command line taken from the recorded
    ``config`` (``aliases``: parameter -> recorded name), and where each value came from."""
    values, sources = dict(ctx.params), {}
    recorded = read_recorded(config) if config is not None else {}
    for name in list(values):
        source = ctx.get_parameter_source(name)
        key = (aliases or {}).get(name, name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            sources[name] = "command line"
        elif name not in _NOT_REPLAYED and recorded.get(key) is not None:
            values[name] = _as_option(recorded[key], values[name])
            sources[name] = f"config {config}"
        else:
            sources[name] = "default"
    return values, sources


def pick(values: dict[str, Any], cls: type, **fixed: Any) -> Any:
    """``cls(**values it has fields for, **fixed)``: a configuration dataclass from parsed parameters."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and k not in fixed}, **fixed)
