"""An exponential moving average of a model's weights (``--ema DECAY``), kept beside the weights the
optimizer trains and used for validation and for the saved model.

After every optimizer step each floating-point entry ``v`` of the model's ``state_dict`` (parameters
and buffers) updates its average ``a <- d a + (1 - d) v`` with ``d = decay (1 - exp(-n / ramp))``
after ``n`` updates (YOLOv5's ramp, shorter: these runs are 1000-3000 iterations): early on the
average follows the weights closely, later it averages over about ``1 / (1 - decay)`` steps.
Integer buffers (counters) are copied. The average is saved in checkpoints
(``checkpoint/ema.safetensors``) so that a resumed run continues it exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["ModelEMA", "EMA_RAMP"]

#: Updates over which the decay ramps up (``1 - 1/e`` of ``decay`` after this many).
EMA_RAMP = 200


class ModelEMA:
    """The moving average of ``model``'s ``state_dict`` (float32 copies; same names)."""

    def __init__(self, model: nn.Module, decay: float, ramp: int = EMA_RAMP) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1) (got {decay})")
        self.decay, self.ramp, self.updates = float(decay), int(ramp), 0
        self.average = {k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
                        for k, v in model.state_dict().items()}

    def rate(self) -> float:
        """``d`` of the next update (see the module docstring)."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update after an optimizer step of ``model``."""
        d = self.rate()
        for name, value in model.state_dict().items():
            avg = self.average[name]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach().float(), alpha=1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (each entry in the model's own dtype)."""
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.average.items()})

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights inside the block, its trained weights restored after."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(trained)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
        """``(tensors, scalars)`` for a checkpoint."""
        return ({k: v.contiguous() for k, v in self.average.items()},
                {"updates": self.updates, "decay": self.decay, "ramp": self.ramp})

    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, int | float]) -> None:
        """Continue from a checkpoint's :meth:`state`."""
        missing = set(self.average) - set(tensors)
        if missing:
            raise KeyError(f"the checkpoint's average lacks {sorted(missing)[0]}")
        self.average = {k: tensors[k].to(self.average[k].device).clone() for k in self.average}
        self.updates = int(scalars["updates"])
