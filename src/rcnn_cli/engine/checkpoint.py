"""Checkpoints of the one trainer: a folder swapped in with renames, safetensors + JSON (no pickle).

``checkpoint/model.safetensors`` (weights), ``optimizer.safetensors`` (momentum buffers) and
``state.json`` (epoch, iteration, optimizer scalars, AMP scaler, every rank's RNG states). A kill at
any moment leaves the previous or the new checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.io.files import creation_mode, fsync_path, read_json
from rcnn_cli.io.tensors import load_state, load_tensors, unwrap

__all__ = ["CHECKPOINT_DIR", "STATE_VERSION", "rng_state", "set_rng_state", "write_checkpoint", "find_checkpoint",
           "load_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
STATE_VERSION = 1


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state dict -> (tensors for safetensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write a complete checkpoint into a fresh folder, then swap it in with renames. ``extra``:
    more tensors, ``{name: tensors}`` written as ``<name>.safetensors`` (e.g. the weights' moving average).

    A kill at any moment leaves either the previous checkpoint or the new one usable: the new one is
    complete before it takes the name; between the two renames the previous one is ``checkpoint.old``,
    which :func:`find_checkpoint` falls back on.
    """
    from safetensors.torch import save_file

    final = out_dir / CHECKPOINT_DIR
    old = out_dir / (CHECKPOINT_DIR + ".old")
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_DIR}.", suffix=".tmp", dir=out_dir))
    os.chmod(tmp, creation_mode(directory=True))
    try:
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _split_optimizer_state(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                      str(tmp / f"{name}.safetensors"))
        state = dict(state, optimizer=opt_meta, version=STATE_VERSION)
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        for name in ("model.safetensors", "optimizer.safetensors", *(f"{n}.safetensors" for n in extra or {})):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_path(tmp)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(out_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(out_dir: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        d = out_dir / name
        if all((d / f).is_file() for f in ("model.safetensors", "optimizer.safetensors", "state.json")):
            return d
    return None


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = read_json(ckpt / "state.json")
    load_state(model, ckpt / "model.safetensors")
    tensors = load_tensors(ckpt / "optimizer.safetensors", "optimizer state")
    try:
        optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    except (ValueError, KeyError) as e:
        raise UserError(f"{ckpt}: optimizer state does not fit this model ({e})") from None
    return state


def load_extra(ckpt: Path, name: str) -> dict[str, torch.Tensor] | None:
    """The ``extra`` tensors ``name`` a checkpoint holds (:func:`write_checkpoint`), or ``None``."""
    path = ckpt / f"{name}.safetensors"
    return load_tensors(path, name) if path.is_file() else None
