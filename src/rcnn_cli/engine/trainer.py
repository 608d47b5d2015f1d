"""The one trainer: every trained method (Fast R-CNN, Faster R-CNN, R-CNN fine-tuning, ...) runs here.

Device selection (CUDA when present), mixed precision on CUDA, SGD with momentum, linear warmup and a
step schedule in epochs, a checkpoint every epoch that ``resume=True`` continues *exactly* (same
weights as an uninterrupted run), ``metrics.jsonl``, a rich progress bar, and DistributedDataParallel
under ``torchrun`` (gloo on CPU, NCCL on CUDA; only rank 0 writes files). Per-epoch validation is the
``evaluate_fn`` hook; per-group learning rates (``lr_mult``) come with ``param_groups``.

The model follows torchvision's detection convention: in train mode
``model(images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]`` of named losses, which the
trainer sums. Run directory::

    out_dir/checkpoint/                 see :mod:`rcnn_cli.engine.checkpoint`
    out_dir/metrics.jsonl               one JSON object per logged iteration and per epoch
    out_dir/model.safetensors           final weights
    out_dir/config.json                 the run record (:mod:`rcnn_cli.io.runs`)
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from rcnn_cli.config import format_duration
from rcnn_cli.engine import budget
from rcnn_cli.engine.ema import ModelEMA
from rcnn_cli.engine.checkpoint import (
    CHECKPOINT_DIR,
    find_checkpoint,
    load_checkpoint,
    load_extra,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from rcnn_cli.errors import Interrupted, UserError
from rcnn_cli.io.files import atomic_open, json_default, read_json, write_json
from rcnn_cli.io.runs import write_run
from rcnn_cli.io.tensors import save_state
from rcnn_cli.log import console, logger, progress_bar
from rcnn_cli.device import barrier, dist_info, init_distributed, resolve_device, seed_everything

BEST_DIR = "best"

__all__ = ["BEST_DIR", "TrainConfig", "default_lr_steps", "collate_detection", "train", "lr_at", "CHECKPOINT_DIR",
           "time_iterations"]


def default_lr_steps(epochs: int) -> tuple[int, ...]:
    """The step epochs when none are given: 2/3 and 11/12 of the run (torchvision's 8, 11 of 12)."""
    if epochs < 3:
        return ()
    return tuple(sorted({max(1, round(epochs * 2 / 3)), max(1, round(epochs * 11 / 12))}))


#: ``--lr-schedule``: the step schedule, the cosine, or ``auto``: the cosine with ``--ema`` where a time budget
#: cuts the schedule, else the step schedule without an average (:meth:`_Loop.resolve_schedule`).
SCHEDULES = ("step", "cosine", "auto")


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr_steps`` are epochs at which the learning rate is multiplied by
    ``lr_gamma`` (torchvision's ``--lr-steps``); ``warmup_iters`` ramps it linearly from
    ``lr * warmup_factor`` over the first iterations. ``batch_size`` is images per process."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] | None = None  # None: at 2/3 and 11/12 of the epochs (12 -> 8, 11)
    lr_gamma: float = 0.1
    warmup_iters: int = 100
    batch_size: int = 2
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    max_iters: int | None = None  # stop early (tests, benchmarks)
    clip_grad: float | None = 10.0
    warmup_factor: float = 0.001
    log_every: int = 10
    progress: bool = True
    channels_last: bool = True  # NHWC weights and activations (README: bench_train figures)
    checkpoint_every: int = 0  # also checkpoint every N iterations (0: once per epoch)
    best_metric: str = "mAP"  # the validation number whose best epoch is kept in best/
    patience: int | None = None  # stop after this many validations without improvement
    tensorboard: bool = False  # also write TensorBoard events into RUN/tensorboard
    compile: bool = False  # torch.compile the training forward (README: bench_train figures)
    time_budget: float | None = None  # seconds (or "30m", "2h"): the schedule capped to fit it (engine/budget.py)
    lr_schedule: str = "step"  # "step" (x lr_gamma at lr_steps), "cosine" (lr down to lr * lr_final) or "auto"
    lr_final: float = 0.01     # cosine: the last iteration's learning rate, as a fraction of lr
    ema: float = 0.0           # the weights' moving-average decay (engine/ema.py), e.g. 0.999; 0: none

    def __post_init__(self) -> None:
        from rcnn_cli.config import parse_duration

        self.time_budget = parse_duration(self.time_budget)
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive (got {self.lr})")
        if self.lr_steps is None:
            self.lr_steps = default_lr_steps(self.epochs)
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if any(s < 1 for s in self.lr_steps):
            raise UserError(f"--lr-steps are epochs, at least 1 (got {', '.join(map(str, self.lr_steps))})")
        if self.lr_schedule not in SCHEDULES:
            raise UserError(f"--lr-schedule must be {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]} (got {self.lr_schedule})")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema is a decay in [0, 1), e.g. 0.9998 (got {self.ema})")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"--patience must be at least 1 epoch (got {self.patience})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def _ignore_sigint(worker_id: int) -> None:
    """Data-loading workers leave Ctrl-C to the main process, which stops cleanly (:class:`_StopOnSigint`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _StopOnSigint:
    """Ctrl-C during training: the first stops the run after the current iteration (the trainer then
    checkpoints and raises :class:`rcnn_cli.errors.Interrupted`), a second one stops at once. Only in
    the main thread of a single process (under torchrun every rank keeps the default)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt: stopping after this iteration and saving a checkpoint (Ctrl-C again: at once)")

    def __enter__(self) -> "_StopOnSigint":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def time_iterations(model: nn.Module, dataset, config: TrainConfig, collate_fn: Callable = collate_detection,
                    iterations: int = 6, warmup: int = 2) -> float:
    """Seconds per training iteration of ``model`` on ``dataset`` at ``config``'s batch size, workers and
    device: data loading, forward, backward and an SGD step (at learning rate 0), the first ``warmup``
    iterations left out; in float32 (on CUDA the trainer's ``--amp`` is faster, never slower), in the
    trainer's memory layout (``channels_last``) and under its memory policy
    (:func:`rcnn_cli.memory.reuse_memory`: without it the same iterations took 1.3-1.5x as long,
    docs/quality.md). For choosing a model before training: the model's batch-norm statistics change,
    so train a new one."""
    from rcnn_cli import memory

    if len(dataset) == 0:
        raise UserError("no training images")
    memory.reuse_memory()
    device = resolve_device(config.device)
    model.to(device).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0,
                                momentum=config.momentum)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collate_fn,
                        num_workers=config.workers, generator=torch.Generator().manual_seed(config.seed))
    done, start = 0, time.perf_counter()
    while done < warmup + iterations:
        for images, targets in loader:
            images, targets = _to_device(images, targets, device)
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == warmup + iterations:
                break
    return (time.perf_counter() - start) / iterations


# ----------------------------------------------------------------------------------------------
# learning rate
# ----------------------------------------------------------------------------------------------

def lr_at(config: TrainConfig, iteration: int, epoch: int, total_iters: int | None = None) -> float:
    """Learning rate at global ``iteration`` (0-based) within ``epoch`` (0-based) of a run of
    ``total_iters``: linear warmup from ``lr * warmup_factor`` over ``warmup_iters`` iterations, times
    ``lr_gamma`` for each step epoch already reached (``step``) or times ``lr_final + (1 - lr_final)
    (1 + cos(pi t / T)) / 2`` at iteration ``t`` of ``T`` (``cosine``). A pure function of the
    position, so the schedule needs no saved state."""
    if config.lr_schedule == "cosine":
        t = min(iteration / max(int(total_iters or 1), 1), 1.0)
        lr = config.lr * (config.lr_final + (1.0 - config.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))
    else:
        lr = config.lr * config.lr_gamma ** sum(1 for s in config.lr_steps if epoch >= s)
    if config.warmup_iters > 0 and iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        lr *= config.warmup_factor * (1 - alpha) + alpha
    return lr


class _Metrics:
    """Append-only ``metrics.jsonl`` (rank 0 only); on resume, entries past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None, tensorboard: bool = False) -> None:
        self.path = path
        self.enabled = enabled
        self.file = self.board = None
        if not enabled:
            return
        if tensorboard:
            self.board = _tensorboard_writer(path.parent / "tensorboard")
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
        with atomic_open(path) as f:
            for line in lines:
                f.write(line + "\n")
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, default=json_default) + "\n")
            self.file.flush()
        if self.board is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("iteration", "epoch"):
                    self.board.add_scalar(f"{record['type']}/{key}", value, record["iteration"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.board is not None:
            self.board.close()
            self.board = None


def _tensorboard_writer(folder: Path):
    """TensorBoard's event writer; a one-line error when the package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'rcnn-cli[tensorboard]'") from None
    return SummaryWriter(str(folder))


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

class _Loop:
    """The state of one training run: model, optimizer, position, timing (see :func:`train`)."""

    def __init__(self, model: nn.Module, dataset, out_dir: Path, config: TrainConfig, collate_fn: Callable,
                 param_groups: Sequence[dict] | None) -> None:
        self.distributed = init_distributed(config.device)
        self.rank, self.world, _ = dist_info()
        self.is_main = self.rank == 0
        self.device = resolve_device(config.device)
        self.amp = bool(config.amp) and self.device.type == "cuda"
        if config.amp and not self.amp:
            logger.warning("--amp needs CUDA; training in float32 on %s", self.device)
        if len(dataset) == 0:
            raise UserError("no training images")
        if self.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.model, self.dataset, self.out_dir, self.config = model, dataset, out_dir, config
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-d weights only; checkpoints are saved contiguous
        groups = [dict(g) for g in param_groups] if param_groups else [{"params": list(model.parameters())}]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
            g.setdefault("lr_mult", 1.0)
        self.params = [p for g in groups for p in g["params"]]
        if not self.params:
            raise UserError("the model has no trainable parameters")
        self.optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        # Randomness inside the loop (RoI sampling, ...) is seeded per rank; the weights are the caller's.
        seed_everything(config.seed + self.rank)
        self.epoch, self.iteration, self.batch_in_epoch, self.train_time = 0, 0, 0, 0.0
        self.images_seen, self.bad_steps, self.stop = 0, 0, False
        self.best: dict[str, Any] = {}
        self.plan: dict[str, Any] = {}  # the time budget's plan (engine/budget.py), once made
        self.wall_time, self.probe_start = 0.0, None  # wall seconds of earlier sessions; probe timing
        self.last_losses: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.collate_fn = collate_fn
        self.interrupt = _StopOnSigint(enabled=not self.distributed)
        self.ema = ModelEMA(model, config.ema) if config.ema and config.lr_schedule != "auto" else None

    # -- setup -------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from ``out_dir``'s checkpoint; False when there is none."""
        ckpt = find_checkpoint(self.out_dir)
        if ckpt is None:
            logger.info("%s: no checkpoint yet; starting from the beginning", self.out_dir)
            return False
        state = load_checkpoint(ckpt, self.model, self.optimizer)
        best = self.out_dir / BEST_DIR / "best.json"
        self.best = read_json(best) if best.is_file() else {}
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.train_time = float(state.get("train_time", 0.0))
        saved = state.get("train_config", {})
        self.wall_time = float(state.get("wall_time", self.train_time))
        if self.config.time_budget and saved.get("budget_plan"):  # keep the plan made before the interruption
            self.plan = dict(saved["budget_plan"])
            self.config = replace(self.config, epochs=int(saved["epochs"]), lr_steps=tuple(saved["lr_steps"]))
            if "lr_schedule" in self.plan:  # --lr-schedule auto, resolved before the interruption
                self._use_schedule(self.plan["lr_schedule"], float(self.plan["ema"]))
        for key in ("lr", "batch_size", "momentum", "weight_decay", "seed"):
            if key in saved and saved[key] != getattr(self.config, key):
                logger.warning("resuming with %s=%s but the checkpoint was trained with %s", key,
                               getattr(self.config, key), saved[key])
        if saved.get("world_size", self.world) != self.world:
            logger.warning("resuming with %d processes; the checkpoint was written by %d", self.world,
                           saved.get("world_size"))
        if self.amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            average = load_extra(ckpt, "ema")
            if average is None or "ema" not in state:
                raise UserError(f"{ckpt}: no moving average of the weights (the run was started without --ema)")
            self.ema.load(average, state["ema"])
        rngs = state.get("rng", [])
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        else:
            seed_everything(self.config.seed + self.rank + 1000 * self.iteration)
        if self.is_main:
            logger.info("resuming from %s: epoch %d, iteration %d", ckpt, self.epoch + 1, self.iteration)
        return True

    def build_loader(self) -> None:
        c = self.config
        self.train_model: nn.Module = self.model
        if self.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if c.compile:  # the forward runs compiled; checkpoints hold the plain module's weights
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self.sampler = _ResumableSampler(self.dataset, num_replicas=self.world, rank=self.rank, seed=c.seed)
        # The loader's own generator (reseeded every epoch) draws the workers' seeds: the global RNG
        # (RoI sampling in the model) is untouched and a resumed epoch sees the same worker seeds.
        self.loader_rng = torch.Generator()
        self.loader = DataLoader(self.dataset, batch_size=c.batch_size, sampler=self.sampler,
                                 collate_fn=self.collate_fn, num_workers=c.workers,
                                 pin_memory=self.device.type == "cuda", generator=self.loader_rng,
                                 worker_init_fn=_ignore_sigint if c.workers else None)
        self.iters_per_epoch = math.ceil(self.sampler.num_samples / c.batch_size)
        self._set_total()

    def _set_total(self) -> None:
        c = self.config
        self.total_iters = self.iters_per_epoch * c.epochs
        if c.max_iters is not None:
            self.total_iters = min(self.total_iters, c.max_iters)

    # -- one iteration -----------------------------------------------------------------------
    def step(self, images: list, targets: list) -> tuple[dict[str, float], float, float]:
        """Forward, backward and SGD step on one batch; returns ``(losses, lr, grad norm)``."""
        lr = lr_at(self.config, self.iteration, self.epoch, self.total_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        images, targets = _to_device(images, targets, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            loss_dict = self.train_model(images, targets)
        loss = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.clip_grad if self.config.clip_grad else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self._apply(grad_norm, loss)
        if self.ema is not None:
            self.ema.update(self.model)
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = float(loss.detach())
        return values, lr, float(grad_norm)

    def _apply(self, grad_norm: torch.Tensor, loss: torch.Tensor) -> None:
        """The optimizer step, skipped on non-finite gradients (identical on every rank after DDP)."""
        if self.amp:
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN gradients
            self.scaler.update()
        elif torch.isfinite(grad_norm):
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            logger.warning("iteration %d: non-finite gradients (loss %s); step skipped", self.iteration + 1,
                           float(loss))
            if self.bad_steps >= 10:
                raise UserError("10 consecutive iterations with non-finite gradients: lower --lr "
                                "or check the data (training stopped; the last checkpoint is kept)")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- the time budget ----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Wall seconds of training so far, earlier sessions of a resumed run included."""
        return self.wall_time + time.perf_counter() - self.started

    def maybe_plan(self) -> None:
        """With a time budget: time the probe iterations (the first two left out), then fit the
        epochs (and step epochs left at their default) to the budget; see :mod:`rcnn_cli.engine.budget`."""
        c, done = self.config, self.iteration - self.start_iteration
        if not c.time_budget or self.plan:
            return
        if done == 2:
            self.probe_start = time.perf_counter()
        probe = budget.probe_iterations(self.iters_per_epoch)
        if done < probe or self.probe_start is None:
            return
        per_iter = self._agree((time.perf_counter() - self.probe_start) / (done - 2))  # rank 0's, on every rank
        fit = budget.plan_epochs(c.time_budget, per_iter, self.iters_per_epoch)
        default_steps = tuple(c.lr_steps) == default_lr_steps(c.epochs)
        self.plan = {"budget_s": c.time_budget, "seconds_per_iter": round(per_iter, 4), "probe_iterations": done - 2,
                     "iters_per_epoch": self.iters_per_epoch, "default_steps": default_steps,
                     "schedule_epochs": c.epochs, "epochs_that_fit": fit}
        self._set_epochs(min(fit, c.epochs), f"{per_iter:.2f} s per iteration x {self.iters_per_epoch} per epoch: "
                                             f"{fit} epochs fit, the schedule has {c.epochs}")
        self.resolve_schedule(fit < c.epochs, f"the budget fits {fit} of the schedule's {c.epochs} epochs")

    def resolve_schedule(self, cut: bool, why: str) -> None:
        """``--lr-schedule auto``: the cosine schedule with the weights' average (``--ema``) when the time
        budget cuts the schedule (``cut``), else the step schedule without an average (docs/quality.md:
        the paired runs behind the rule); recorded in the plan. Other schedules are left alone."""
        c = self.config
        if c.lr_schedule != "auto":
            return
        schedule, ema = ("cosine", c.ema) if cut else ("step", 0.0)
        self._use_schedule(schedule, ema)
        if self.plan:  # resumed runs keep it
            self.plan.update(lr_schedule=schedule, ema=ema)
        if self.is_main:
            logger.info("--lr-schedule auto: %s%s (%s)", schedule, f" with --ema {ema:g}" if ema else "", why)

    def _use_schedule(self, schedule: str, ema: float) -> None:
        self.config = replace(self.config, lr_schedule=schedule, ema=ema)
        if ema and self.ema is None:
            self.ema = ModelEMA(self.model, ema)

    def _set_epochs(self, epochs: int, why: str) -> None:
        c = self.config
        steps = default_lr_steps(epochs) if self.plan["default_steps"] else tuple(c.lr_steps)
        self.config = replace(c, epochs=epochs, lr_steps=tuple(steps))
        self._set_total()
        self.plan.update(planned_epochs=epochs, lr_steps=list(steps))
        if self.is_main:
            logger.info("time budget %s: %s -> %d epochs (lr steps at %s)", format_duration(c.time_budget), why,
                        epochs, ", ".join(map(str, steps)) or "none")

    def budget_allows_next_epoch(self, epoch_s: float) -> bool:
        """After an epoch of ``epoch_s`` seconds: the plan corrected from the measured time while no lr
        step has been reached; False (and the plan says so) when one more epoch would overrun the budget."""
        if not self.plan:
            return True
        c, elapsed = self.config, self._agree(self.elapsed())
        epoch_s = self._agree(epoch_s)
        if self.plan["default_steps"] and self.epoch < min(c.lr_steps or (c.epochs,)):
            epochs = max(budget.replan_epochs(self.epoch, elapsed, epoch_s, c.time_budget,
                                              self.plan.get("schedule_epochs", budget.MAX_EPOCHS)), self.epoch)
            if epochs != c.epochs:
                self._set_epochs(epochs, f"re-planned from the last epoch's {format_duration(epoch_s)}")
            if epochs > self.epoch:
                return True
        if budget.epoch_fits(c.time_budget, elapsed, epoch_s):
            return True
        self.plan["stopped_after_epoch"] = self.epoch
        logger.warning("time budget: stopping after epoch %d of %d (%s spent; another epoch takes about %s)",
                       self.epoch, self.config.epochs, format_duration(self.elapsed()), format_duration(epoch_s))
        return False

    def _agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a decision all processes must share)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- files -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Gather every rank's RNG state, then rank 0 writes."""
        rng = rng_state()
        gathered: list[Any] = [rng]
        if self.distributed:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
        if self.is_main:
            write_checkpoint(self.out_dir, self.model, self.optimizer, {
                "epoch": self.epoch, "iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
                "train_time": self.train_time, "wall_time": self.elapsed(),
                "scaler": self.scaler.state_dict() if self.amp else None, "rng": gathered,
                "train_config": dict(self.config.to_dict(), world_size=self.world, budget_plan=self.plan),
                **({"ema": self.ema.state()[1]} if self.ema else {})},
                extra={"ema": self.ema.state()[0]} if self.ema else None)
        barrier()

    def validate(self, evaluate_fn: Callable | None, record: dict[str, Any]) -> None:
        """The ``evaluate_fn`` hook on rank 0, its numbers into the epoch record; the best epoch's
        weights kept in ``best/`` and, with ``patience``, the run stopped when it stops improving."""
        if evaluate_fn is None:
            return
        if self.is_main:
            self.model.eval()
            with torch.no_grad(), (self.ema.applied(self.model) if self.ema else nullcontext()):
                result = evaluate_fn(self.model, self.epoch) or {}
                self._keep_best(result.get(self.config.best_metric))  # the weights validated
            self.model.train()
            record.update({f"val_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
            logger.info("epoch %d: %s", self.epoch, ", ".join(
                f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
        if self.distributed:
            flag = [self.stop]
            dist.broadcast_object_list(flag, src=0)
            self.stop = bool(flag[0])
        barrier()

    def _keep_best(self, value: float | None) -> None:
        if value is None:
            return
        b = self.best
        if b.get("value") is None or value > b["value"]:
            save_state(self.model, self.out_dir / BEST_DIR / "model.safetensors")
            b.update(value=float(value), epoch=self.epoch, since=0)
        else:
            b["since"] = int(b.get("since", 0)) + 1
        b["metric"] = self.config.best_metric
        write_json(self.out_dir / BEST_DIR / "best.json", b)
        if self.config.patience is not None and b["since"] >= self.config.patience:
            logger.info("validation %s has not improved for %d epoch(s) (best %.4f at epoch %d): stopping",
                        b["metric"], b["since"], b["value"], b["epoch"])
            self.stop = True

    def summary(self) -> dict[str, Any]:
        seen = self.images_seen * self.world
        return {"epochs": self.epoch, "iterations": self.iteration, "images": seen,
                "train_time_s": round(self.train_time, 3),
                "images_per_s": round(seen / self.train_time, 3) if self.train_time > 0 else None,
                "losses": self.last_losses, "history": self.history, "device": str(self.device),
                "world_size": self.world, "best": dict(self.best), "stopped_early": self.stop,
                **({"time_budget": dict(self.plan, ran_epochs=self.epoch, wall_s=round(self.elapsed(), 1))}
                   if self.plan else {})}


def _iteration_record(loop: _Loop, values: dict[str, float], lr: float, grad_norm: float,
                      ips: float) -> dict[str, Any]:
    return {"type": "iter", "epoch": loop.epoch + 1, "iteration": loop.iteration, "lr": lr,
            **{k: round(v, 6) for k, v in values.items()}, "grad_norm": round(grad_norm, 4),
            "images_per_s": round(ips, 3)}


def _status(values: dict[str, float], ips: float, lr: float) -> str:
    parts = [f"loss {values['loss']:.3f}"] + [f"{k.replace('loss_', '')} {v:.3f}" for k, v in values.items()
                                               if k != "loss"]
    return f"{' '.join(parts)} | {ips:.1f} img/s | lr {lr:.2g}"


def _log_line(loop: _Loop, ips: float, lr: float) -> str:
    """``epoch 1/12 iter 40/2400 loss 1.234 objectness 0.1 ... lr 0.01 2.1 img/s ETA 12m05s``."""
    per_iter = (time.perf_counter() - loop.started) / max(loop.iteration - loop.start_iteration, 1)
    eta = int(per_iter * (loop.total_iters - loop.iteration))
    return (f"epoch {loop.epoch + 1}/{loop.config.epochs} iter {loop.iteration}/{loop.total_iters} "
            f"{_status(loop.last_losses, ips, lr).replace(' | ', ' ')} ETA {eta // 60}m{eta % 60:02d}s")


def _run_epoch(loop: _Loop, metrics: "_Metrics", progress, task) -> dict[str, Any]:
    """One (possibly resumed, possibly cut by ``max_iters``) epoch; returns its record."""
    c, world = loop.config, loop.world
    loop.train_model.train()
    loop.sampler.set_epoch(loop.epoch)
    loop.sampler.start = loop.batch_in_epoch * c.batch_size
    loop.loader_rng.manual_seed(c.seed * 100003 + loop.epoch * 101 + loop.rank)
    if hasattr(loop.dataset, "set_epoch"):
        loop.dataset.set_epoch(loop.epoch)
    sums: dict[str, float] = {}
    n_batches = epoch_images = window_images = 0
    epoch_start = window_start = time.perf_counter()
    progress.update(task, description=f"epoch {loop.epoch + 1}/{loop.config.epochs}")
    for images, targets in loop.loader:
        t0 = time.perf_counter()
        values, lr, grad_norm = loop.step(images, targets)
        loop.train_time += time.perf_counter() - t0
        loop.iteration += 1
        loop.batch_in_epoch += 1
        loop.maybe_plan()
        n_batches += 1
        epoch_images += len(images)
        window_images += len(images)
        loop.images_seen += len(images)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if loop.iteration % max(1, c.log_every) == 0 or loop.iteration in (1, loop.total_iters):
            now = time.perf_counter()
            ips = window_images * world / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            loop.last_losses = _reduce_mean(values, loop.device)
            metrics.write(_iteration_record(loop, loop.last_losses, lr, grad_norm, ips))
            progress.update(task, status=_status(loop.last_losses, ips, lr))
            if loop.is_main and not console.is_terminal:  # a log file (nohup, CI): a plain line, with an ETA
                logger.info("%s", _log_line(loop, ips, lr))
        progress.update(task, completed=loop.iteration)
        if loop.iteration >= loop.total_iters or loop.interrupt.requested:
            break
        if c.checkpoint_every and loop.iteration % c.checkpoint_every == 0 and loop.batch_in_epoch < loop.iters_per_epoch:
            loop.checkpoint()
    elapsed = time.perf_counter() - epoch_start
    mean = _reduce_mean({k: v / max(n_batches, 1) for k, v in sums.items()}, loop.device)
    return {"type": "epoch", "epoch": loop.epoch + 1, "iteration": loop.iteration,
            "complete": loop.batch_in_epoch >= loop.iters_per_epoch
                        or (loop.iteration < loop.total_iters and not loop.interrupt.requested),
            **{k: round(v, 6) for k, v in mean.items()},
            "images_per_s": round(epoch_images * world / max(elapsed, 1e-9), 3), "epoch_time_s": round(elapsed, 3)}


def train(model: nn.Module, dataset: torch.utils.data.Dataset, out_dir: str | os.PathLike, config: TrainConfig,
          collate_fn: Callable = collate_detection, resume: bool = False, model_config: Any = None,
          evaluate_fn: Callable[[nn.Module, int], dict] | None = None, command: str = "train",
          kind: str | None = None, param_groups: Sequence[dict] | None = None,
          sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``dataset``; see the module docstring for the files written.

    ``dataset`` items are ``(image (3, H, W) float in [0, 1], target dict)`` (or whatever
    ``collate_fn`` batches); if it has ``set_epoch(epoch)`` it is called before every epoch.
    ``evaluate_fn(model, epoch)`` runs on rank 0 after every epoch with the model in eval mode; its
    numbers go to ``metrics.jsonl``. ``param_groups``: SGD groups, each with an ``lr_mult`` (default
    one group of every trainable parameter). ``kind``, ``model_config`` and ``sources`` (setting ->
    where its value came from: command line, a replayed config, default) go into the run record.
    Returns a summary: epochs, iterations, losses, images/s, train time.
    """
    kind = kind or getattr(model_config, "method", None) or "train"  # the model configuration's method
    from rcnn_cli.memory import reuse_memory

    reuse_memory()
    out_dir = Path(out_dir)
    loop = _Loop(model, dataset, out_dir, config, collate_fn, param_groups)
    resumed = loop.resume() if resume else False
    loop.start_iteration, loop.started = loop.iteration, time.perf_counter()
    if not config.time_budget:
        loop.resolve_schedule(False, "no time budget: the whole schedule runs")
    loop.build_loader()
    metrics = _Metrics(out_dir / "metrics.jsonl", loop.is_main, keep_until=loop.iteration if resumed else None,
                       tensorboard=config.tensorboard)
    train_record = dict(config.to_dict(), world_size=loop.world, device=str(loop.device), amp_active=loop.amp)
    model_config = asdict(model_config) if is_dataclass(model_config) else dict(model_config or {})
    if loop.is_main:
        write_run(out_dir, kind, model_config or {}, train_record, command, complete=False, sources=sources or {})
    with loop.interrupt, progress_bar(enabled=config.progress and loop.is_main) as progress:
        task = progress.add_task("train", total=loop.total_iters, completed=loop.iteration, status="")
        while loop.epoch < loop.config.epochs and loop.iteration < loop.total_iters and not loop.stop:
            epoch_start = time.perf_counter()
            record = _run_epoch(loop, metrics, progress, task)
            progress.update(task, total=loop.total_iters)  # a time budget may have re-planned it
            if record["complete"]:
                loop.epoch, loop.batch_in_epoch = loop.epoch + 1, 0
            loop.checkpoint()
            if record["complete"]:
                loop.validate(evaluate_fn, record)
            metrics.write(record)
            loop.history.append(record)
            if loop.interrupt.requested:
                break
            if record["complete"] and loop.epoch < loop.config.epochs:
                loop.stop = loop.stop or not loop.budget_allows_next_epoch(time.perf_counter() - epoch_start)
    metrics.close()
    if loop.interrupt.requested and loop.epoch < loop.config.epochs and loop.iteration < loop.total_iters:
        raise Interrupted(f"stopped at iteration {loop.iteration} of {loop.total_iters} (epoch {loop.epoch + 1}/"
                          f"{loop.config.epochs}); checkpoint {find_checkpoint(out_dir)}", resumable=True)
    summary = loop.summary()
    train_record = dict(train_record, **loop.config.to_dict(), **({"time_budget_plan": loop.plan} if loop.plan else {}))
    if loop.is_main:
        if loop.ema is not None:  # the saved model is the average (the checkpoint keeps the trained weights)
            loop.ema.copy_to(model)
        save_state(model, out_dir / "model.safetensors")
        write_run(out_dir, kind, model_config or {}, train_record, command,
                  complete=loop.epoch >= loop.config.epochs or loop.stop,
                  sources=sources or {}, summary={k: v for k, v in summary.items() if k != "history"})
    barrier()
    return summary
