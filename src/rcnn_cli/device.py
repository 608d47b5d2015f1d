"""Where code runs: the one device resolver (honouring torchrun's ``LOCAL_RANK``), the process
group, seeds, and device synchronisation for timings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from rcnn_cli.errors import UserError
from rcnn_cli.log import logger

__all__ = ["dist_info", "resolve_device", "seed_everything", "init_distributed", "barrier", "synchronize"]


def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torch.distributed or the torchrun environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: "str | torch.device" = "auto") -> torch.device:
    """``"auto"`` -> CUDA (this process's ``LOCAL_RANK`` GPU under torchrun) when present, else CPU.

    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` are taken as given; asking for CUDA on a machine
    without it is a :class:`UserError`.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            _, world, local_rank = dist_info()
            return torch.device("cuda", local_rank % torch.cuda.device_count()) if world > 1 else torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (use auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            _, world, local_rank = dist_info()
            if world > 1:
                device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {name}: MPS is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def init_distributed(device_name: str) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed support")
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name.lower() in ("auto", "cuda") or device_name.lower().startswith("cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        logger.debug("joined process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock timing covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
