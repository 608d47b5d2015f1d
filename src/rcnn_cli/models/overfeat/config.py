"""Overfeat's configuration (:class:`OverfeatConfig`: the localizer with a background class), its name and
defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from rcnn_cli.errors import UserError
from rcnn_cli.models.localizer import LocalizerConfig


#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "overfeat"
TRAIN_DEFAULTS = {"epochs": 8, "batch_size": 4, "lr": 0.002, "weight_decay": 1e-4, "warmup_iters": 20}
STRIDE = 32


@dataclass
class OverfeatConfig(LocalizerConfig):
    """A localizer with a background class, applied densely (the run's ``model`` record)."""

    kind: str = NAME
    attach: str = "conv"
    boxes: str = "specific"     # Overfeat's regressor is class-specific
    background: bool = True
    scales: list[float] = field(default_factory=list)  # image scale factors; [] until chosen from the data
    offsets: list[int] = field(default_factory=lambda: [0])  # image shifts in pixels, each < 32
    merge: str = "greedy"       # "greedy" (Overfeat) or "nms"
    merge_threshold: float = 0.5  # greedy merging stops when the best pair's match score exceeds it
    fill: tuple[float, float] = (0.4, 0.9)  # an object's longest side / the side of its training window
    jitter: float = 0.125       # a positive window's centre moves by up to this fraction of its side
    positives: int = 2          # positive windows per image per epoch
    negatives: int = 2          # negative windows per image per epoch
    max_side: int = 1600        # no scale makes an image's longer side longer than this

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fill = tuple(float(f) for f in self.fill)
        self.scales, self.offsets = [float(s) for s in self.scales], [int(o) for o in self.offsets]
        if self.k != 1 or not self.background:
            raise UserError("Overfeat predicts one box per window (k=1) with a background class")
        if self.merge not in ("greedy", "nms"):
            raise UserError(f"--merge must be greedy or nms (got '{self.merge}')")
        if any(s <= 0 for s in self.scales) or any(not 0 <= o < STRIDE for o in self.offsets) or not self.offsets:
            raise UserError(f"--scales must be > 0 and --offsets in 0..{STRIDE - 1} pixels "
                            f"(got {self.scales}, {self.offsets})")
        if not 0 < self.fill[0] < self.fill[1] <= 1.0 or self.positives < 1 or self.negatives < 0:
            raise UserError(f"fill must be 0 < lo < hi <= 1 and positives >= 1 (got {self.fill}, {self.positives})")
