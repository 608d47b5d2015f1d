"""YOLO v1 (Redmon et al., 2016): detection as one regression from the image to an S x S x (5B + C) tensor.

The image is divided into an ``S x S`` grid (``grid``, 7). Each cell predicts ``B`` boxes
(``boxes_per_cell``, 2), each ``x, y, sqrt(w), sqrt(h), confidence``, and ``C`` class
probabilities ``Pr(class | object)`` shared by its boxes. ``x, y`` are the box centre's offset
inside the cell, ``w, h`` its size relative to the image; all in ``[0, 1]``.

- **Network**: the backbone registry's whole convolutional part (stride 32, frozen batch norms;
  the registry's first modules frozen as for the other detectors), then the paper's head shape: a
  3x3 convolution (stride 2 when the map is ``2S`` wide), leaky ReLU 0.1, two fully connected
  layers (``hidden`` units, leaky ReLU 0.1, dropout 0.5) to ``S * S * (5B + C)``.
- **Input**: the image is resized to a square ``input_size`` (default ``64 * S`` = 448, the
  paper's: "detection often requires fine-grained visual information"), whose 14x14 stride-32 map a
  stride-2 convolution brings to 7x7. ``input_size = 32 * S`` (224 on the 7x7 map) is 4x cheaper
  and coarser.
- **Outputs**: sigmoid on the coordinates and confidences and a softmax over the classes keep each
  prediction in its target's range (the paper's last layer is linear; bounded outputs train stably
  from ImageNet weights in few epochs on small data). The loss is the paper's sum-squared error on them.
- **Loss** (:func:`yolo_loss`), summed over the grid, averaged over the images of the batch:
  ``lambda_coord`` (5) x the error of ``x, y`` and of ``sqrt(w), sqrt(h)`` of the responsible
  predictors; the confidence error of responsible predictors (target: the IoU of the prediction
  with its object) and ``lambda_noobj`` (0.5) x the confidence of the others (target 0); the class
  probability error of cells that hold an object.
- **Responsibility** (:func:`assign_cells`, :func:`build_targets`): an object belongs to the cell
  of its centre; a cell holds at most ``B`` objects (the ``B`` largest); among the cell's
  predictors the one whose current box has the highest IoU with the object is responsible
  (greedily, highest IoU first, one object per predictor). A cell's class target is the mean of its
  objects' one-hot classes.
- **Training** (:func:`train_yolo`, on :func:`rcnn_cli.engine.train`): random horizontal flip,
  random scaling and translation of up to ``jitter`` (20 %) of the image size, exposure and
  saturation scaled by up to ``exposure`` (1.5); SGD with warm-up then steps.
- **Detection** (:class:`YOLODetector`): class-specific confidence ``Pr(class | object) x
  confidence`` for each of the ``S * S * B`` boxes, threshold, per-class NMS, top-K; boxes in pixels
  of the original image.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchvision.ops import box_area
from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.method import CompareEntry, Export, Method

__all__ = ["YOLOConfig", "YOLOv1", "assign_cells", "build_targets", "yolo_loss", "decode_output",
           "YOLODetector", "train_yolo", "grid_ceiling", "TRAIN_DEFAULTS"]

MODEL_VERSION = 1

#: Training settings of ``rcnn yolo train`` that differ from :class:`rcnn_cli.engine.TrainConfig`'s.
#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "yolo"
TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 8, "lr": 0.005, "weight_decay": 5e-4, "warmup_iters": 100}


@dataclass
class YOLOConfig:
    """Everything needed to rebuild a YOLO v1 network (the run's ``model`` record); validates itself."""

    classes: list[str] = field(default_factory=list)
    backbone: str = "efficientnet_lite0"
    kind: str = "yolo_v1"
    version: int = MODEL_VERSION
    weights: str = "imagenet"
    weights_id: str | None = None
    grid: int = 7
    boxes_per_cell: int = 2
    input_size: int | None = None  # None: 64 * grid (the paper's 448 for S = 7)
    head: str = "conv"  # "conv" (1x1 convolutions: each cell from its own window) or "fc" (the paper's)
    hidden: int = 512
    head_channels: int = 256
    dropout: float = 0.5
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    jitter: float = 0.2
    exposure: float = 1.5
    frozen_modules: int | None = None  # None: the backbone registry's
    score_thresh: float = DetectConfig.score_threshold
    nms_thresh: float = DetectConfig.nms
    detections_per_img: int = DetectConfig.top_k
    trained_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rcnn_cli.backbones import get_spec

        get_spec(self.backbone)
        self.classes = list(self.classes)
        if int(self.grid) < 1 or int(self.boxes_per_cell) < 1:
            raise UserError(f"--grid and --boxes-per-cell must be at least 1 (got {self.grid}, {self.boxes_per_cell})")
        self.grid, self.boxes_per_cell = int(self.grid), int(self.boxes_per_cell)
        self.input_size = int(self.input_size or 64 * self.grid)
        if self.input_size not in (32 * self.grid, 64 * self.grid):
            raise UserError(f"--input-size must be 32 x grid (the stride-32 map is the grid) or 64 x grid (a stride-2 "
                            f"layer halves it): {32 * self.grid} or {64 * self.grid} for --grid {self.grid}")
        if self.head not in ("conv", "fc"):
            raise UserError(f"--head must be conv or fc (got '{self.head}')")
        if not 0.0 <= self.jitter < 0.5 or self.exposure < 1.0:
            raise UserError(f"jitter must be in [0, 0.5) and exposure at least 1 (got {self.jitter}, {self.exposure})")

    @property
    def depth(self) -> int:
        """Numbers per cell: ``5 B + C``."""
        return 5 * self.boxes_per_cell + len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "YOLOConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------
# Targets, loss and decoding (tensors in, tensors out)


def cell_boxes(params: torch.Tensor) -> torch.Tensor:
    """``(..., S, S, B, 4)`` ``x, y, sqrt(w), sqrt(h)`` -> normalised ``x1, y1, x2, y2`` boxes."""
    s = params.shape[-3]
    cols = torch.arange(s, dtype=params.dtype, device=params.device).view(1, s, 1)
    rows = torch.arange(s, dtype=params.dtype, device=params.device).view(s, 1, 1)
    cx, cy = (cols + params[..., 0]) / s, (rows + params[..., 1]) / s
    w, h = params[..., 2] ** 2, params[..., 3] ** 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def assign_cells(boxes: torch.Tensor, grid: int, boxes_per_cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell of each normalised ``(M, 4)`` box: ``(row, col)`` of its centre, ``(M,)`` each, and
    ``kept`` ``(M,)`` bool: whether the box is among the ``boxes_per_cell`` largest of its cell (what
    the grid can represent at all)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx * grid).floor().clamp(0, grid - 1).long()
    row = (cy * grid).floor().clamp(0, grid - 1).long()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cell = row * grid + col
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for c in cell.unique():
        members = torch.nonzero(cell == c).flatten()
        order = members[torch.argsort(area[members], descending=True, stable=True)]
        kept[order[:boxes_per_cell]] = True
    return torch.stack([row, col]), kept


def build_targets(pred_boxes: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int
                  ) -> dict[str, torch.Tensor]:
    """Targets of one image. ``pred_boxes``: ``(S, S, B, 4)`` the current predictions (normalised
    ``x1, y1, x2, y2``); ``boxes`` ``(M, 4)`` normalised ground truth, ``labels`` ``(M,)`` in ``0..C-1``.

    Returns ``obj`` ``(S, S, B)`` bool (responsible predictors), ``params`` ``(S, S, B, 4)`` (their
    ``x, y, sqrt(w), sqrt(h)`` targets), ``iou`` ``(S, S, B)`` (confidence targets), ``cls``
    ``(S, S, C)`` and ``cell`` ``(S, S)`` bool (cells holding an object).
    """
    from torchvision.ops import box_iou

    s, b = pred_boxes.shape[0], pred_boxes.shape[2]
    dev = pred_boxes.device
    out = {"obj": torch.zeros(s, s, b, dtype=torch.bool, device=dev), "params": torch.zeros(s, s, b, 4, device=dev),
           "iou": torch.zeros(s, s, b, device=dev), "cls": torch.zeros(s, s, num_classes, device=dev),
           "cell": torch.zeros(s, s, dtype=torch.bool, device=dev)}
    if len(boxes) == 0:
        return out
    (rows, cols), kept = assign_cells(boxes, s, b)
    for r, c in {(int(r), int(c)) for r, c, k in zip(rows, cols, kept) if k}:
        members = torch.nonzero((rows == r) & (cols == c) & kept).flatten()
        ious = box_iou(pred_boxes[r, c], boxes[members])  # (B, k)
        free_pred, free_obj = set(range(b)), set(members.tolist())
        for flat in torch.argsort(ious.flatten(), descending=True, stable=True).tolist():
            p, m = divmod(flat, len(members))
            obj = int(members[m])
            if p in free_pred and obj in free_obj:
                free_pred.discard(p), free_obj.discard(obj)
                out["obj"][r, c, p] = True
                out["iou"][r, c, p] = ious[p, m]
                out["params"][r, c, p] = _box_params(boxes[obj], r, c, s)
        out["cell"][r, c] = True
        out["cls"][r, c] = F.one_hot(labels[members], num_classes).float().mean(0)
    return out


def _box_params(box: torch.Tensor, row: int, col: int, grid: int) -> torch.Tensor:
    """A normalised box as its cell's ``x, y, sqrt(w), sqrt(h)`` target."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = (box[2] - box[0]).clamp(min=0), (box[3] - box[1]).clamp(min=0)
    return torch.stack([cx * grid - col, cy * grid - row, w.sqrt(), h.sqrt()])


def split_output(out: torch.Tensor, boxes_per_cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, S, S, 5B + C)`` activated output -> box params ``(N, S, S, B, 4)``, confidences
    ``(N, S, S, B)``, class probabilities ``(N, S, S, C)``."""
    n, s = out.shape[0], out.shape[1]
    boxes = out[..., : 5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    return boxes[..., :4], boxes[..., 4], out[..., 5 * boxes_per_cell:]


def yolo_loss(out: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], boxes_per_cell: int,
              lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> dict[str, torch.Tensor]:
    """The paper's five sum-squared terms, each summed over the grid and averaged over the batch.

    ``out``: ``(N, S, S, 5B + C)`` activated; ``targets``: one :func:`build_targets` dict per image.
    """
    params, conf, probs = split_output(out, boxes_per_cell)
    t = {k: torch.stack([d[k] for d in targets]) for k in targets[0]}
    obj, n = t["obj"].float(), out.shape[0]
    xy = ((params[..., :2] - t["params"][..., :2]) ** 2).sum(-1)
    wh = ((params[..., 2:] - t["params"][..., 2:]) ** 2).sum(-1)
    return {
        "loss_xy": lambda_coord * (obj * xy).sum() / n,
        "loss_wh": lambda_coord * (obj * wh).sum() / n,
        "loss_obj": (obj * (conf - t["iou"]) ** 2).sum() / n,
        "loss_noobj": lambda_noobj * ((1 - obj) * conf ** 2).sum() / n,
        "loss_class": (t["cell"].float().unsqueeze(-1) * (probs - t["cls"]) ** 2).sum() / n,
    }


def decode_output(out: torch.Tensor, boxes_per_cell: int, width: float, height: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's activated output ``(S, S, 5B + C)`` -> boxes ``(S*S*B, 4)`` in pixels of a
    ``width x height`` image and class-specific confidences ``(S*S*B, C)`` = ``Pr(class | object) x
    confidence``."""
    params, conf, probs = split_output(out.unsqueeze(0), boxes_per_cell)
    boxes = cell_boxes(params[0]) * torch.tensor([width, height, width, height], dtype=out.dtype, device=out.device)
    scores = conf[0].unsqueeze(-1) * probs[0].unsqueeze(-2)  # (S, S, B, C)
    return boxes.reshape(-1, 4), scores.reshape(-1, probs.shape[-1])


# --------------------------------------------------------------------------------------------
# The network


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


# --------------------------------------------------------------------------------------------
# The detector


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


class YOLODetector(Detector):
    """A trained YOLO v1: one forward pass per image, no proposals. Timings: ``"network"`` (resize,
    normalise, trunk, head) and ``"post"`` (decoding, threshold, per-class NMS)."""

    kind = NAME
    weights = "final"  # which weights of the run (set by from_run)
    runtime = "torch"

    def __init__(self, model: YOLOv1, config: DetectSettings = None) -> None:
        from rcnn_cli.memory import reuse_memory

        reuse_memory()
        cfg = model.rcnn_config
        self.model = model.to(memory_format=torch.channels_last)
        self.device = next(model.parameters()).device
        self.classes = list(cfg.classes)
        self.config = settings_in_effect(config, DetectConfig(cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img))

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 weights: str = "final", runtime: str = "torch") -> "YOLODetector":
        """``weights``: final | best; ``runtime``: the trunk's (torch, onnxruntime, openvino, auto; the head
        stays in torch)."""
        from rcnn_cli.io.files import file_sha256
        from rcnn_cli.io.runs import weights_file
        from rcnn_cli.backends import RuntimeTrunk, resolve_runtime

        model, _ = load_model(run_dir, device, weights)
        runtime = resolve_runtime(runtime, next(model.parameters()).device.type)
        if runtime != "torch":
            if next(model.parameters()).device.type != "cpu":
                raise UserError(f"--runtime {runtime}: for the CPU (use --runtime torch)")
            key = {"run": "yolo-trunk", "weights": file_sha256(weights_file(run_dir, weights))}
            model.trunk = RuntimeTrunk(model.trunk, runtime, Path(run_dir) / "graphs", key)
        detector = cls(model, config)
        detector.weights, detector.runtime = weights, runtime
        return detector

    def settings(self) -> dict:
        cfg = self.model.rcnn_config
        return dict(super().settings(), weights=self.weights, runtime=self.runtime, grid=cfg.grid, boxes_per_cell=cfg.boxes_per_cell,
                    input_size=cfg.input_size)

    @torch.inference_mode()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.device import synchronize

        t0 = time.perf_counter()
        x = to_tensor(image).to(self.device)
        out = self.model([x])[0]
        synchronize(self.device)
        t1 = time.perf_counter()
        boxes, scores, labels = self.postprocess(out, image.size[0], image.size[1])
        det = ImageDetections(image_id, boxes, scores, [self.classes[i] for i in labels])
        det.timings = {"network": t1 - t0, "post": time.perf_counter() - t1}
        return det

    def postprocess(self, out: torch.Tensor, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One output ``(S, S, 5B + C)`` -> ``(boxes (K, 4) pixels, scores (K,), class indices 0..C-1)``."""
        from torchvision.ops import batched_nms, clip_boxes_to_image

        cfg = self.model.rcnn_config
        boxes, scores = decode_output(out.float(), cfg.boxes_per_cell, width, height)
        boxes = clip_boxes_to_image(boxes, (height, width))
        idx, cls = torch.nonzero(scores > self.config.score_threshold, as_tuple=True)
        b, s = boxes[idx], scores[idx, cls]
        keep = batched_nms(b, s, cls, self.config.nms)[: self.config.top_k]
        return (b[keep].cpu().numpy().astype(np.float32).reshape(-1, 4), s[keep].cpu().numpy().astype(np.float32),
                cls[keep].cpu().tolist())


# --------------------------------------------------------------------------------------------
# Training


def make_evaluate_fn(dataset, classes: Sequence[str]) -> Callable[[nn.Module, int], dict]:
    """``evaluate_fn(model, epoch) -> {"mAP": voc12}`` for the trainer, through the one inference loop."""
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset

    def evaluate_fn(model: nn.Module, epoch: int) -> dict:
        dets = detect_dataset(YOLODetector(model), dataset, classes)
        value = float(evaluate(dataset, dets, metric="voc12")["mAP"])
        return {"mAP_voc12": value, "mAP": value}

    return evaluate_fn


def train_yolo(dataset_path: str | Path, split: str | None, out: str | Path, model: YOLOConfig | None,
               train_config, *, images: str | Path | None = None, val_split: str | None = None,
               resume: bool = False, command: str = "rcnn yolo train", sources: dict[str, str] | None = None) -> dict:
    """Train YOLO v1 (``model``: its :class:`YOLOConfig`, the classes taken from the data; ``None``: the
    defaults) on a labelled split with :func:`rcnn_cli.engine.train` and ``train_config`` (a
    :class:`rcnn_cli.engine.trainer.TrainConfig`). Writes ``out/model.safetensors`` and
    ``out/config.json``; returns the engine's summary (+ ``"model_config"``). With ``resume``, the
    recorded model configuration is used."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine import train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if resume and (out / "config.json").is_file():
        cfg = _model_config_from(out)
        logger.info("resuming with the model configuration recorded in %s", out / "config.json")
    else:
        cfg = replace(model or YOLOConfig(), classes=list(ds.classes))
        cfg.weights_id = weights_id(cfg.backbone, cfg.weights)
        cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records)}
    if list(cfg.classes) != list(ds.classes):
        raise UserError(f"{out}: the checkpoint was trained on classes {cfg.classes}, this split has {ds.classes}")
    seed_everything(train_config.seed)
    network = build_model(cfg, weights=cfg.weights)
    evaluate_fn = None
    if val_split:
        evaluate_fn = make_evaluate_fn(load_dataset(dataset_path, val_split, images, classes=list(ds.classes)), ds.classes)
    summary = train(network, DetectionDataset(ds, flip=True, seed=train_config.seed), out, train_config, resume=resume,
                    model_config=cfg, evaluate_fn=evaluate_fn, command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary


# --------------------------------------------------------------------------------------------
# The grid's ceiling


def grid_ceiling(dataset, grids: Sequence[int], boxes_per_cell: Sequence[int]) -> list[dict[str, Any]]:
    """The share of valid ground-truth boxes a grid can represent (at most ``B`` objects per cell),
    for every ``(S, B)``: rows ``{"grid", "boxes_per_cell", "total": share, "per_class": {name: share},
    "boxes": count}``. Shares in ``[0, 1]``; the same rule as training (:func:`assign_cells`)."""
    from rcnn_cli.boxes import valid_box_mask

    per_image = []
    for rec in dataset.records:
        if not rec.width or not rec.height:
            continue
        boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        labels = np.array(rec.labels, object)
        keep = valid_box_mask(boxes, rec.width, rec.height)
        if keep.any():
            norm = np.clip(boxes[keep] / np.array([rec.width, rec.height] * 2, np.float32), 0, 1)
            per_image.append((torch.from_numpy(norm), labels[keep]))
    rows = []
    for s in grids:
        for b in boxes_per_cell:
            kept = [(assign_cells(bx, int(s), int(b))[1].numpy(), lb) for bx, lb in per_image]
            total = sum(len(k) for k, _ in kept)
            per_class = {}
            for name in dataset.classes:
                n = sum(int((lb == name).sum()) for _, lb in kept)
                per_class[name] = (sum(int(k[lb == name].sum()) for k, lb in kept) / n) if n else math.nan
            rows.append({"grid": int(s), "boxes_per_cell": int(b), "boxes": total,
                         "total": (sum(int(k.sum()) for k, _ in kept) / total) if total else math.nan,
                         "per_class": per_class})
    return rows


# ----------------------------------------------------------------------------------------------
# what the registry knows of YOLO v1
# ----------------------------------------------------------------------------------------------

class _WholeYOLO(nn.Module):
    """A YOLO v1 network from normalised ``(N, 3, S, S)`` squares to its ``(N, S', S', 5B + C)`` output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.trunk(x))


def _network(run) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """The export of the whole network (:class:`rcnn_cli.method.Export`)."""
    from rcnn_cli.backends import normalization

    model, cfg = load_model(run.root)
    s, depth = cfg.input_size, cfg.depth
    return _WholeYOLO(model).eval(), torch.rand(1, 3, s, s), {
        "what": "the whole YOLO v1 network (trunk and head)", "normalization": normalization(cfg.backbone),
        "inputs": [{"name": "images", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        "outputs": [{"name": "grid", "shape": ["batch", cfg.grid, cfg.grid, depth], "dtype": "float32",
                     "meaning": "per cell: B x (x, y, sqrt w, sqrt h, confidence), then the class probabilities"}],
        "caller": f"resize the image to {s}x{s}, normalise, run this; per cell the first {5 * cfg.boxes_per_cell} "
                  f"numbers are {cfg.boxes_per_cell} x (x, y, sqrt w, sqrt h, confidence) and the rest the class "
                  "probabilities: decode with rcnn_cli.models.yolo.decode_output, then threshold, per-class NMS"}


def _compare_step(c) -> None:
    """``rcnn compare``: training and detection, no proposals (``c``: the compare context)."""
    Y, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = {"Y": Y, "D": D, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
              "device": c.device, "train_split": d.train_split, **d.data_id}

    def train(resume: bool) -> dict:
        model = {k: Y[k] for k in ("input_size", "grid", "boxes_per_cell")}
        model.update(backbone=c.backbone, score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                     detections_per_img=int(D["top_k"]))
        return train_yolo(d.path, d.train_split, run_dir, YOLOConfig(**model, weights=c.settings["model"]["weights"]),
                          c.train_config(Y), images=d.images, resume=resume, command=f"{c.command} ({NAME})")

    c.results[NAME] = c.train_and_evaluate(NAME, config, run_dir, train,
                                           lambda: YOLODetector.from_run(run_dir, device=c.device))


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    Y = s[NAME]
    sched = f"{Y['epochs']} epochs, lr {Y['lr']} (x0.1 at epochs {Y['lr_steps']}), batch {Y['batch_size']}"
    return (f"- YOLO v1: {Y['input_size']}x{Y['input_size']} input, {Y['grid']}x{Y['grid']} grid, "
            f"{Y['boxes_per_cell']} boxes per cell; {sched}")


#: ``rcnn compare``'s settings per budget.
COMPARE_SETTINGS = {
    "quick": {"input_size": 224, "grid": 7, "boxes_per_cell": 2, "epochs": 15, "lr": 0.005, "lr_steps": [12],
              "warmup_iters": 50, "batch_size": 8, "max_iters": None},
    "full": {"input_size": 448, "grid": 7, "boxes_per_cell": 2, "epochs": 60, "lr": 0.005, "lr_steps": [40, 52],
             "warmup_iters": 100, "batch_size": 8, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="YOLO v1", detector=YOLODetector, config=YOLOConfig,
    export=Export(network=_network, batched=True),
    compare=CompareEntry(
        settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe,
        input_text=lambda s, result: f"{s[NAME]['input_size']}x{s[NAME]['input_size']} px, "
                                     f"{s[NAME]['grid']}x{s[NAME]['grid']} grid",
        proposals=lambda s: f"none ({s[NAME]['boxes_per_cell']} boxes per cell)"))
