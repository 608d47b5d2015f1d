"""Training Overfeat's window classifier and box regressor on windows sampled around the objects."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from torchvision.ops import box_area
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.models.localizer import Localizer
from rcnn_cli.models.overfeat.config import NAME, OverfeatConfig
from rcnn_cli.models.overfeat.dense import choose_scales


def _matches(window: torch.Tensor, boxes: torch.Tensor, fill: tuple[float, float]) -> torch.Tensor:
    """Which ``boxes (N, 4)`` a square ``window (4,)`` matches: half of the box's area inside and its
    longest side within 3/4 of ``fill``'s range of the window's side. ``(N,)`` bool."""
    side = float(window[2] - window[0])
    inter_w = (torch.minimum(boxes[:, 2], window[2]) - torch.maximum(boxes[:, 0], window[0])).clamp(min=0)
    inter_h = (torch.minimum(boxes[:, 3], window[3]) - torch.maximum(boxes[:, 1], window[1])).clamp(min=0)
    area = box_area(boxes).clamp(min=1e-6)
    longest = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side
    return (inter_w * inter_h / area >= 0.5) & (longest >= 0.75 * fill[0]) & (longest <= fill[1] / 0.75)


def sample_windows(boxes: torch.Tensor, labels: torch.Tensor, width: int, height: int, cfg: OverfeatConfig,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training windows of one image (boxes in pixels, ``labels`` ``0..C-1``): squares ``(W, 4)``
    in pixels, labels ``(W,)`` (``C`` for background) and the object boxes in each window's
    normalised coordinates ``(W, 4)`` (zeros for background). See the module docstring."""
    c, windows, wl, wb = len(cfg.classes), [], [], []
    u = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    for k in torch.randperm(len(boxes), generator=gen)[: cfg.positives].tolist():
        b = boxes[k]
        side = float(torch.maximum(b[2] - b[0], b[3] - b[1])) / (cfg.fill[0] + u() * (cfg.fill[1] - cfg.fill[0]))
        cx = float(b[0] + b[2]) / 2 + (2 * u() - 1) * cfg.jitter * side
        cy = float(b[1] + b[3]) / 2 + (2 * u() - 1) * cfg.jitter * side
        win = torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        windows.append(win), wl.append(int(labels[k])), wb.append((b - win[[0, 1, 0, 1]]) / side)
    sides = [cfg.input_size / s for s in cfg.scales] or [float(min(width, height))]
    for _ in range(cfg.negatives):
        for _attempt in range(10):
            side = min(sides[int(u() * len(sides)) % len(sides)], float(min(width, height)))
            x0, y0 = u() * (width - side), u() * (height - side)
            win = torch.tensor([x0, y0, x0 + side, y0 + side])
            if not len(boxes) or not bool(_matches(win, boxes, cfg.fill).any()):
                windows.append(win), wl.append(c), wb.append(torch.zeros(4))
                break
    return torch.stack(windows), torch.tensor(wl), torch.stack(wb)


def crop_windows(image: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``windows (W, 4)`` (pixels) of ``image (3, H, W)`` resized to ``size``: ``(W, 3, size,
    size)``, black outside the image (as the dense pass pads)."""
    from torchvision.ops import roi_align

    return roi_align(image[None].float(), [windows.float()], output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


class WindowDataset(torch.utils.data.Dataset):
    """Items ``(windows (W, 3, S, S), targets)`` of one training image, ``targets`` a list of
    ``{"loc_boxes": (1, 4), "loc_labels": (1,)}`` per window; windows drawn anew each epoch from
    ``(seed, epoch, index)`` (so a resumed run draws the same). Images without objects are left out
    (with a warning)."""

    def __init__(self, dataset, cfg: OverfeatConfig, seed: int = 0) -> None:
        from rcnn_cli.engine.dataset import DetectionDataset

        empty = [r.image_id for r in dataset.records if not len(r.boxes)]
        if empty:
            logger.warning("%d image(s) without objects left out of Overfeat training (e.g. %s)", len(empty), empty[0])
        kept = [r for r in dataset.records if len(r.boxes)]
        if not kept:
            raise UserError("no image of the split has an object to train Overfeat on")
        self.base = DetectionDataset(type(dataset)(dataset.root, dataset.split, dataset.classes, kept), seed=seed)
        self.cfg, self.seed = cfg, int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        gen = torch.Generator().manual_seed(hash((self.seed, self.base.epoch, index)) % 2**63)
        h, w = image.shape[-2:]
        windows, labels, boxes = sample_windows(target["boxes"], target["labels"] - 1, w, h, self.cfg, gen)
        crops = crop_windows(image, windows, self.cfg.input_size)
        return crops, [{"loc_boxes": b[None], "loc_labels": lab[None]} for b, lab in zip(boxes, labels)]


def collate_windows(batch):
    """Images' windows -> one flat list of crops and one of targets."""
    crops = [c for item, _ in batch for c in item]
    targets = [t for _, ts in batch for t in ts]
    return crops, targets


# --------------------------------------------------------------------------------------------
# Training


def _scales_from(ds, cfg: OverfeatConfig) -> list[float]:
    from rcnn_cli.fitting import data_stats

    stats = data_stats(ds)
    return choose_scales(stats.longest, stats.long, cfg.input_size, cfg.fill, cfg.max_side)


def train_overfeat(dataset_path: str | Path, split: str | None, out: str | Path, model: OverfeatConfig | None,
                   train_config, *, images: str | Path | None = None, resume: bool = False,
                   command: str = "rcnn overfeat train", sources: dict[str, str] | None = None) -> dict:
    """Train Overfeat's window classifier and regressor (``model``: its :class:`OverfeatConfig`, the
    classes taken from the data; empty ``scales`` are chosen from the training boxes, recorded as
    chosen) on :func:`rcnn_cli.engine.train` with ``train_config``. Returns the engine's summary (+
    ``"model_config"``)."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import load_training_dataset, training_split
    from rcnn_cli.engine import train
    from rcnn_cli.io.runs import model_config
    from rcnn_cli.device import seed_everything

    out = Path(out)
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if resume and (out / "config.json").is_file():
        cfg = model_config(out, NAME, OverfeatConfig)
    else:
        cfg = replace(model or OverfeatConfig(), classes=list(ds.classes))
        given_scales = bool(cfg.scales)
        cfg.weights_id = weights_id(cfg.backbone, cfg.weights)
        if not cfg.scales:
            cfg.scales = _scales_from(ds, cfg)
            logger.info("scales %s: the training objects' sizes (10th-90th percentile) at the window's fill %s",
                        cfg.scales, cfg.fill)
        cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records),
                          "scales": "given" if given_scales else "chosen from the training boxes"}
    seed_everything(train_config.seed)
    network = Localizer(cfg, cfg.weights)
    data = WindowDataset(ds, cfg, seed=train_config.seed)
    summary = train(network, data, out, train_config, collate_fn=collate_windows, resume=resume, model_config=cfg,
                    command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary
