"""A training schedule fitted to a time budget (``--time-budget``), from the measured speed.

The trainer runs ``probe_iterations(...)`` iterations, then :func:`plan_epochs` turns the measured
seconds per iteration into the number of epochs that fit; the schedule (the data's default or
``--epochs``) is cut to them, never stretched: a budget is a ceiling, not a target (epochs beyond the
schedule overfit a small dataset; README). Step epochs left at their default follow the new length.
After each epoch, until the first step epoch, the plan is corrected from the measured epoch time
(:func:`replan_epochs`: data loading, validation and checkpoints included, which a probe of a few
iterations misses); later, the trainer only checks that one more epoch still fits
(:func:`epoch_fits`) and stops otherwise. The plan is recorded in the run and its checkpoint, so a
resumed run keeps it.
"""

from __future__ import annotations

import math

from rcnn_cli.config import format_duration
from rcnn_cli.errors import UserError

__all__ = ["MAX_EPOCHS", "probe_iterations", "plan_epochs", "replan_epochs", "epoch_fits"]

MAX_EPOCHS = 50
PROBE = 20  # iterations timed before planning (the first two are left out: warm-up)


def probe_iterations(iters_per_epoch: int) -> int:
    """Iterations timed before planning: ``PROBE``, at most one epoch, at least 3."""
    return max(3, min(PROBE, iters_per_epoch))


def plan_epochs(budget_s: float, seconds_per_iter: float, iters_per_epoch: int, spent_s: float = 0.0) -> int:
    """The whole epochs that fit in ``budget_s`` seconds of training at ``seconds_per_iter`` (``spent_s``
    already used: start-up, probe), at most :data:`MAX_EPOCHS`. Less than one epoch is a one-line error
    that says the minimum."""
    epoch_s = seconds_per_iter * iters_per_epoch
    epochs = int((budget_s - spent_s) // epoch_s) if epoch_s > 0 else MAX_EPOCHS
    if epochs < 1:
        need = math.ceil((spent_s + epoch_s) * 1.1 / 60) * 60
        raise UserError(f"--time-budget {format_duration(budget_s)} is too small: one epoch takes about "
                        f"{format_duration(epoch_s)} here ({iters_per_epoch} iterations x {seconds_per_iter:.2f} s); "
                        f"give at least {format_duration(need)}")
    return min(epochs, MAX_EPOCHS)


def epoch_fits(budget_s: float, elapsed_s: float, epoch_s: float) -> bool:
    """Whether one more epoch of ``epoch_s`` seconds fits in what is left of the budget (5 % slack)."""
    return elapsed_s + epoch_s <= budget_s * 1.05


def replan_epochs(done: int, elapsed_s: float, epoch_s: float, budget_s: float, most: int = MAX_EPOCHS) -> int:
    """The epochs in all after ``done`` epochs took ``elapsed_s`` seconds, one more taking ``epoch_s``:
    ``done`` plus the whole epochs left in the budget, at most ``most`` (the schedule's) and :data:`MAX_EPOCHS`."""
    return min(MAX_EPOCHS, most, done + max(0, int((budget_s - elapsed_s) // max(epoch_s, 1e-9))))
