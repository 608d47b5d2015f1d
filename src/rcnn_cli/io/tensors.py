"""Safetensors files (no pickle): the one loader and saver, with one-line errors.

Every model file of the package (detector weights, SVMs, box regressors, checkpoints, exported
backbones) goes through :func:`load_tensors` / :func:`save_tensors`; module weights through
:func:`load_state` / :func:`save_state`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.io.files import atomic_path

__all__ = ["load_tensors", "save_tensors", "load_state", "save_state", "unwrap"]


def load_tensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (CPU); a missing or unreadable file is a :class:`UserError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing {what} file (not found)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically (copied to contiguous CPU memory first: shared storages are split)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_state(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` as safetensors, atomically."""
    save_tensors(path, unwrap(model).state_dict(), metadata)


def load_state(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a safetensors state dict into ``model`` (a ``module.`` prefix from DDP is dropped);
    a missing/corrupt file or a mismatch is a one-line :class:`UserError`."""
    state = load_tensors(path)
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    target = unwrap(model)
    own = target.state_dict()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    if wrong or missing or unexpected:
        example = (wrong + missing + unexpected)[0]
        raise UserError(f"{path}: weights do not match the model in config.json ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(wrong)} of another shape, e.g. {example})")
    target.load_state_dict(state, strict=strict)
    return model
