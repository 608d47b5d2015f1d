"""Training engine shared by Fast R-CNN and Faster R-CNN.

One loop for both detectors: device selection (CUDA when present), mixed precision on CUDA, SGD with
momentum, linear warmup and a step schedule, a checkpoint every epoch (safetensors + JSON, no pickle)
that ``resume=True`` continues *exactly* (same weights as an uninterrupted run), ``metrics.jsonl``,
a rich progress bar, and DistributedDataParallel when launched by ``torchrun`` (gloo on CPU, NCCL
on CUDA; only rank 0 writes files).

The model follows torchvision's detection convention: in train mode
``model(images: list[Tensor (3, H, W) in [0, 1]], targets: list[dict]) -> dict[str, Tensor]`` of
named losses, which the engine sums.

Run directory layout::

    out_dir/checkpoint/model.safetensors      weights after the last finished epoch
    out_dir/checkpoint/optimizer.safetensors  optimizer tensors (momentum buffers)
    out_dir/checkpoint/state.json             epoch, iteration, optimizer scalars, AMP scaler, RNG states
    out_dir/metrics.jsonl                     one JSON object per logged iteration and per epoch
    out_dir/model.safetensors                 final weights
    out_dir/config.json                       {"command", "config": {"model": ..., "train": ...}, ...}
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from rcnn_cli.errors import UserError
from rcnn_cli.io import read_json, run_record, write_json
from rcnn_cli.log import logger, progress_bar

__all__ = [
    "TrainConfig",
    "DetectionDataset",
    "resolve_device",
    "seed_everything",
    "collate_detection",
    "train",
    "lr_at",
    "save_weights",
    "load_weights",
    "read_run_config",
    "dist_info",
    "CHECKPOINT_DIR",
]

CHECKPOINT_DIR = "checkpoint"
STATE_VERSION = 1


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr_steps`` are epochs at which the learning rate is multiplied by
    ``lr_gamma`` (torchvision's ``--lr-steps``); ``warmup_iters`` ramps it linearly from
    ``lr * warmup_factor`` over the first iterations. ``batch_size`` is images per process."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_iters: int = 100
    batch_size: int = 2
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    max_iters: int | None = None  # stop early (tests, benchmarks)
    clip_grad: float | None = 10.0
    # extras (not in the original contract; defaults keep it compatible)
    warmup_factor: float = 0.001
    log_every: int = 10
    progress: bool = True
    # NHWC weights and activations: on 2 CPU cores EfficientNet-Lite0 training steps are 1.19x
    # (Faster R-CNN) and 1.48x (Fast R-CNN) faster (scripts/bench_train.py; oneDNN's depthwise
    # convolutions), and it is the layout tensor cores want under AMP on CUDA.
    channels_last: bool = True

    def __post_init__(self) -> None:
        self.lr_steps = tuple(int(s) for s in (self.lr_steps or ()))
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive (got {self.lr})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------
# devices, seeds, distributed
# ----------------------------------------------------------------------------------------------

def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torch.distributed or the torchrun environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA (this process's ``LOCAL_RANK`` GPU under torchrun) when present, else CPU.

    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` are taken as given; asking for CUDA on a machine
    without it is a :class:`UserError`.
    """
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


def _init_distributed(device_name: str) -> bool:
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


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images of different sizes, targets of different lengths."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class _ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (works with one process too) that can skip the first ``start`` samples of
    an epoch, so a resumed run sees exactly the batches the interrupted one had left."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


# ----------------------------------------------------------------------------------------------
# learning rate
# ----------------------------------------------------------------------------------------------

def lr_at(config: TrainConfig, iteration: int, epoch: int) -> float:
    """Learning rate at global ``iteration`` (0-based) within ``epoch`` (0-based): linear warmup from
    ``lr * warmup_factor`` over ``warmup_iters`` iterations, times ``lr_gamma`` for each step epoch
    already reached. A pure function of the position, so the schedule needs no saved state."""
    lr = config.lr * config.lr_gamma ** sum(1 for s in config.lr_steps if epoch >= s)
    if config.warmup_iters > 0 and iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        lr *= config.warmup_factor * (1 - alpha) + alpha
    return lr


# ----------------------------------------------------------------------------------------------
# weights and checkpoints (no pickle)
# ----------------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` as safetensors, atomically (shared tensors are copied apart)."""
    from safetensors.torch import save_file

    from rcnn_cli.io import atomic_path

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a safetensors state dict into ``model``; a missing/corrupt file or a mismatch is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        _unwrap(model).load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not fit this model ({first[0] if first else e})") from None
    return model


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``{"model": model_config, "train": train config, ...}`` from ``run_dir/config.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: model directory not found")
    record = read_json(run_dir / "config.json")
    config = record.get("config", record)
    if "model" not in config:
        raise UserError(f"{run_dir}/config.json: no model configuration (not a training run directory?)")
    return config


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write a complete checkpoint into a fresh folder, then swap it in with renames.

    A kill at any moment leaves either the previous checkpoint or the new one usable: the new one is
    complete before it takes the name; between the two renames the previous one is ``checkpoint.old``,
    which :func:`_find_checkpoint` falls back on.
    """
    from safetensors.torch import save_file

    final = out_dir / CHECKPOINT_DIR
    old = out_dir / (CHECKPOINT_DIR + ".old")
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_DIR}.", suffix=".tmp", dir=out_dir))
    try:
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in _unwrap(model).state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _split_optimizer_state(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = dict(state, optimizer=opt_meta, version=STATE_VERSION)
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        for name in ("model.safetensors", "optimizer.safetensors"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _find_checkpoint(out_dir: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        d = out_dir / name
        if all((d / f).is_file() for f in ("model.safetensors", "optimizer.safetensors", "state.json")):
            return d
    return None


def _load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = read_json(ckpt / "state.json")
    load_weights(model, ckpt / "model.safetensors")
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    try:
        optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    except (ValueError, KeyError) as e:
        raise UserError(f"{ckpt}: optimizer state does not fit this model ({e})") from None
    return state


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

class _Metrics:
    """Append-only ``metrics.jsonl`` (rank 0 only); on resume, entries past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None) -> None:
        self.path = path
        self.enabled = enabled
        self.file = None
        if not enabled:
            return
        if keep_until is None:
            lines: list[str] = []
        else:
            lines = []
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if rec.get("iteration", 0) <= keep_until:
                        lines.append(line)
        from rcnn_cli.io import atomic_open

        with atomic_open(path) as f:
            for line in lines:
                f.write(line + "\n")
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, default=_json_default) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged numbers over ranks (for logging only)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def train(model: nn.Module, dataset: torch.utils.data.Dataset, out_dir: str | os.PathLike, config: TrainConfig,
          collate_fn: Callable = collate_detection, resume: bool = False, model_config: dict | None = None,
          evaluate_fn: Callable[[nn.Module, int], dict] | None = None, command: str = "train") -> dict[str, Any]:
    """Train ``model`` on ``dataset``; see the module docstring for the files written.

    ``model(images, targets)`` returns a dict of losses in train mode. ``dataset`` items are
    ``(image (3, H, W) float in [0, 1], target dict)``; if it has ``set_epoch(epoch)`` the engine calls
    it before every epoch (deterministic per-epoch augmentation). ``evaluate_fn(model, epoch)`` runs on
    rank 0 after every epoch with the unwrapped model in eval mode; its numeric results go to
    ``metrics.jsonl``. Returns a summary: epochs, iterations, losses, images/s, train time.
    """
    from rcnn_cli.memory import reuse_memory

    reuse_memory()
    out_dir = Path(out_dir)
    distributed = _init_distributed(config.device)
    rank, world, _ = dist_info()
    is_main = rank == 0
    device = resolve_device(config.device)
    amp = bool(config.amp) and device.type == "cuda"
    if config.amp and not amp:
        logger.warning("--amp needs CUDA; training in float32 on %s", device)
    if len(dataset) == 0:
        raise UserError("no training images")
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-d weights only; checkpoints are saved contiguous
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    # Randomness inside the training loop (RoI sampling, ...) is seeded per rank; the weights are the
    # caller's (DDP broadcasts rank 0's at wrap time).
    seed_everything(config.seed + rank)
    start_epoch, iteration, batch_in_epoch = 0, 0, 0
    train_time = 0.0
    ckpt = _find_checkpoint(out_dir) if resume else None
    if resume and ckpt is None:
        logger.info("%s: no checkpoint yet; starting from the beginning", out_dir)
    if ckpt is not None:
        state = _load_checkpoint(ckpt, model, optimizer)
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        batch_in_epoch = int(state.get("batch_in_epoch", 0))
        train_time = float(state.get("train_time", 0.0))
        saved = state.get("train_config", {})
        for key in ("lr", "batch_size", "momentum", "weight_decay", "seed"):
            if key in saved and saved[key] != getattr(config, key):
                logger.warning("resuming with %s=%s but the checkpoint was trained with %s", key, getattr(config, key), saved[key])
        if saved.get("world_size", world) != world:
            logger.warning("resuming with %d processes; the checkpoint was written by %d", world, saved.get("world_size"))
        if amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng", [])
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        else:
            seed_everything(config.seed + rank + 1000 * iteration)
        if is_main:
            logger.info("resuming from %s: epoch %d, iteration %d", ckpt, start_epoch + 1, iteration)

    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    sampler = _ResumableSampler(dataset, num_replicas=world, rank=rank, seed=config.seed)
    # The loader draws its workers' base seed from its own generator, reseeded every epoch, so the global
    # RNG (RoI sampling in the model) is untouched and a resumed epoch sees the same worker seeds.
    loader_rng = torch.Generator()
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=config.workers, pin_memory=device.type == "cuda", generator=loader_rng)
    iters_per_epoch = math.ceil(sampler.num_samples / config.batch_size)
    total_iters = iters_per_epoch * config.epochs
    if config.max_iters is not None:
        total_iters = min(total_iters, config.max_iters)

    metrics = _Metrics(out_dir / "metrics.jsonl", is_main, keep_until=iteration if ckpt is not None else None)
    config_record = {"model": model_config or {}, "train": dict(config.to_dict(), world_size=world, device=str(device), amp_active=amp)}
    if is_main:
        write_json(out_dir / "config.json", run_record(command, dict(config_record, complete=False)))

    def checkpoint(epoch: int, batch: int) -> None:
        """Gather every rank's RNG state, then rank 0 writes."""
        rng = _rng_state()
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if is_main:
            _write_checkpoint(out_dir, model, optimizer, {
                "epoch": epoch, "iteration": iteration, "batch_in_epoch": batch, "train_time": train_time,
                "scaler": scaler.state_dict() if amp else None, "rng": gathered,
                "train_config": dict(config.to_dict(), world_size=world)})
        _barrier()

    history: list[dict[str, Any]] = []
    last_losses: dict[str, float] = {}
    images_seen = 0
    stopped = iteration >= total_iters
    bad_steps = 0
    with progress_bar(enabled=config.progress and is_main) as progress:
        task = progress.add_task("train", total=total_iters, completed=iteration, status="")
        epoch = start_epoch
        while epoch < config.epochs and not stopped:
            train_model.train()
            sampler.set_epoch(epoch)
            sampler.start = batch_in_epoch * config.batch_size
            loader_rng.manual_seed(config.seed * 100003 + epoch * 101 + rank)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sums: dict[str, float] = {}
            n_batches, epoch_images = 0, 0
            epoch_start = time.perf_counter()
            window_start, window_images = time.perf_counter(), 0
            progress.update(task, description=f"epoch {epoch + 1}/{config.epochs}")
            for images, targets in loader:
                t0 = time.perf_counter()
                lr = lr_at(config, iteration, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, targets = _to_device(images, targets, device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    loss_dict = train_model(images, targets)
                loss = sum(loss_dict.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                max_norm = config.clip_grad if config.clip_grad else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                # Gradients are identical on every rank after DDP's all-reduce, so this decision is too.
                if amp:
                    scaler.step(optimizer)  # skips the step itself on inf/NaN gradients
                    scaler.update()
                elif torch.isfinite(grad_norm):
                    optimizer.step()
                    bad_steps = 0
                else:
                    bad_steps += 1
                    logger.warning("iteration %d: non-finite gradients (loss %s); step skipped", iteration + 1, float(loss))
                    if bad_steps >= 10:
                        raise UserError("10 consecutive iterations with non-finite gradients: lower --lr "
                                        "or check the data (training stopped; the last checkpoint is kept)")
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                train_time += dt
                iteration += 1
                batch_in_epoch += 1
                n_batches += 1
                epoch_images += len(images)
                window_images += len(images)
                images_seen += len(images)
                values = {k: float(v.detach()) for k, v in loss_dict.items()}
                values["loss"] = float(loss.detach())
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if iteration % max(1, config.log_every) == 0 or iteration == 1 or iteration == total_iters:
                    now = time.perf_counter()
                    ips = window_images * world / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    logged = _reduce_mean(values, device)
                    last_losses = logged
                    metrics.write({"type": "iter", "epoch": epoch + 1, "iteration": iteration, "lr": lr,
                                   **{k: round(v, 6) for k, v in logged.items()},
                                   "grad_norm": round(float(grad_norm), 4), "images_per_s": round(ips, 3)})
                    parts = [f"loss {logged['loss']:.3f}"] + [
                        f"{k.replace('loss_', '')} {v:.3f}" for k, v in logged.items() if k != "loss"]
                    progress.update(task, status=f"{' '.join(parts)} | {ips:.1f} img/s | lr {lr:.2g}")
                progress.update(task, completed=iteration)
                if iteration >= total_iters:
                    stopped = True
                    break
            epoch_done = not stopped or batch_in_epoch >= iters_per_epoch
            elapsed = time.perf_counter() - epoch_start
            mean = _reduce_mean({k: v / max(n_batches, 1) for k, v in sums.items()}, device)
            record: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "iteration": iteration,
                                      "complete": epoch_done, **{k: round(v, 6) for k, v in mean.items()},
                                      "images_per_s": round(epoch_images * world / max(elapsed, 1e-9), 3),
                                      "epoch_time_s": round(elapsed, 3)}
            if epoch_done:
                epoch, batch_in_epoch = epoch + 1, 0
            checkpoint(epoch, batch_in_epoch)
            if epoch_done and evaluate_fn is not None:
                if is_main:
                    model.eval()
                    with torch.no_grad():
                        result = evaluate_fn(model, epoch) or {}
                    model.train()
                    record.update({f"val_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
                    logger.info("epoch %d: %s", epoch, ", ".join(
                        f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
                _barrier()
            metrics.write(record)
            history.append(record)

    metrics.close()
    summary = {"epochs": epoch, "iterations": iteration, "images": images_seen * world,
               "train_time_s": round(train_time, 3),
               "images_per_s": round(images_seen * world / train_time, 3) if train_time > 0 else None,
               "losses": last_losses, "history": history, "device": str(device), "world_size": world}
    if is_main:
        save_weights(model, out_dir / "model.safetensors")
        write_json(out_dir / "config.json", run_record(command, dict(
            config_record, complete=epoch >= config.epochs,
            summary={k: v for k, v in summary.items() if k != "history"})))
    _barrier()
    return summary


# Contract: DetectionDataset is importable from rcnn_cli.engine too.
def __getattr__(name: str):
    if name == "DetectionDataset":
        from rcnn_cli.data.torch_dataset import DetectionDataset

        return DetectionDataset
    raise AttributeError(name)
