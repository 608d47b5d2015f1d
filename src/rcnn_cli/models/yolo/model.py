"""The YOLO v1 network (a backbone trunk and a conv or fc head), its augmentation; building and loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchvision.ops import box_area
from rcnn_cli.errors import UserError
from rcnn_cli.models.yolo.config import MODEL_VERSION, NAME, YOLOConfig
from rcnn_cli.models.yolo.loss import build_targets, cell_boxes, split_output, yolo_loss


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


class YOLOv1(nn.Module):
    """Trunk + head. ``forward(images: list[(3, H, W)] in [0, 1], targets=None)``: in train mode the
    five named losses (images augmented, see the module docstring); in eval mode the activated
    output ``(N, S, S, 5B + C)`` of the images resized to ``input_size``."""

    def __init__(self, cfg: YOLOConfig, weights: str = "imagenet") -> None:
        from rcnn_cli.backbones import build_dense_trunk, freeze_leading, get_spec

        super().__init__()
        self.rcnn_config = cfg
        spec = get_spec(cfg.backbone)
        self.trunk, ch, stride = build_dense_trunk(cfg.backbone, weights, freeze_bn=True)
        freeze_leading(self.trunk, spec.frozen_modules if cfg.frozen_modules is None else cfg.frozen_modules)
        step = cfg.input_size // stride // cfg.grid
        self.conv = nn.Conv2d(ch, cfg.head_channels, 3, stride=step, padding=1)
        if cfg.head == "fc":
            self.fc1 = nn.Linear(cfg.head_channels * cfg.grid * cfg.grid, cfg.hidden)
            self.fc2 = nn.Linear(cfg.hidden, cfg.grid * cfg.grid * cfg.depth)
        else:
            self.fc1 = nn.Conv2d(cfg.head_channels, cfg.hidden, 1)
            self.fc2 = nn.Conv2d(cfg.hidden, cfg.depth, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk features ``(N, C, S', S')`` -> activated output ``(N, S, S, 5B + C)``."""
        cfg = self.rcnn_config
        x = _leaky(self.conv(features))
        if cfg.head == "fc":
            x = self.fc2(self.dropout(_leaky(self.fc1(x.flatten(1))))).view(-1, cfg.grid, cfg.grid, cfg.depth)
        else:
            x = self.fc2(self.dropout(_leaky(self.fc1(x)))).permute(0, 2, 3, 1)
        nb = 5 * cfg.boxes_per_cell
        return torch.cat([torch.sigmoid(x[..., :nb]), torch.softmax(x[..., nb:], dim=-1)], dim=-1)

    def prepare(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Resize to ``input_size`` squares and normalise: ``(N, 3, size, size)``."""
        from rcnn_cli.backbones import get_spec, square_batch

        return square_batch(images, self.rcnn_config.input_size, get_spec(self.rcnn_config.backbone))

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None):
        cfg = self.rcnn_config
        if not self.training:
            return self.head(self.trunk(self.prepare(images)))
        if targets is None:
            raise ValueError("YOLOv1 in train mode needs targets")
        batch, boxes = augment(self.prepare(images), [_normalised(t["boxes"], im) for t, im in zip(targets, images)],
                               cfg.jitter, cfg.exposure, self.mean, self.std)
        out = self.head(self.trunk(batch))
        with torch.no_grad():
            pred = cell_boxes(split_output(out, cfg.boxes_per_cell)[0])
        tgts = [build_targets(pred[i], boxes[i][0], targets[i]["labels"][boxes[i][1]] - 1, len(cfg.classes))
                for i in range(len(images))]
        return yolo_loss(out, tgts, cfg.boxes_per_cell, cfg.lambda_coord, cfg.lambda_noobj)


def _normalised(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[-2:]
    return boxes.reshape(-1, 4) / torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)


def augment(batch: torch.Tensor, boxes: Sequence[torch.Tensor], jitter: float, exposure: float,
            mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The paper's augmentation of a normalised batch ``(N, 3, S, S)``: scale by ``1 +- jitter``,
    shift by up to ``jitter`` of the size (borders filled with the mean colour), then exposure and
    saturation times ``exposure^u``, ``u`` uniform in ``[-1, 1]``. ``boxes``: normalised ``(M, 4)``
    per image. Returns the batch and, per image, ``(boxes clipped to the view, (M,) kept indices)``
    (boxes left with under a tenth of their area are dropped)."""
    from torchvision.transforms.functional import adjust_brightness, adjust_saturation

    n, dev = batch.shape[0], batch.device
    scale = 1 + (torch.rand(n, device=dev) * 2 - 1) * jitter
    shift = (torch.rand(n, 2, device=dev) * 2 - 1) * jitter
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / scale, 1 / scale, 2 * shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, align_corners=False)
    rgb = (batch * std + mean).clamp(0, 1)
    factors = exposure ** (torch.rand(n, 2, device=dev) * 2 - 1)
    rgb = torch.stack([adjust_saturation(adjust_brightness(im, float(f[0])), float(f[1])) for im, f in zip(rgb, factors)])
    out = []
    for b, s, t in zip(boxes, scale, shift):
        moved = ((b - (0.5 + t).repeat(2)) * s + 0.5)
        clipped = moved.clamp(0, 1)
        kept_area, area = box_area(clipped), box_area(moved)
        keep = torch.nonzero((kept_area >= 0.1 * area.clamp(min=1e-12)) & (kept_area > 0)).flatten()
        out.append((clipped[keep], keep))
    return ((rgb - mean) / std).contiguous(memory_format=torch.channels_last), out


def build_model(cfg: YOLOConfig, weights: str = "imagenet") -> YOLOv1:
    """A YOLO v1 network for ``cfg``, its new layers initialised from the global torch seed."""
    if not cfg.classes:
        raise UserError("YOLO needs at least one class")
    return YOLOv1(cfg, weights)


def _model_config_from(run_dir: Path) -> YOLOConfig:
    from rcnn_cli.io.runs import model_config

    return model_config(run_dir, NAME, YOLOConfig)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "final"
               ) -> tuple[YOLOv1, YOLOConfig]:
    """Rebuild a trained YOLO from ``RUN_DIR/config.json`` and its safetensors weights (eval mode)."""
    from rcnn_cli.io.runs import load_weights
    from rcnn_cli.device import resolve_device

    cfg = _model_config_from(Path(run_dir))
    if int(cfg.version) > MODEL_VERSION:
        raise UserError(f"{run_dir}/config.json: model version {cfg.version} is newer than this rcnn ({MODEL_VERSION})")
    model = load_weights(build_model(cfg, weights="none"), run_dir, weights)
    return model.to(resolve_device(device)).eval(), cfg
