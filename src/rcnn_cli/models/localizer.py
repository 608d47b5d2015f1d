"""Classification + localization by regression (the lecture's four steps), ``rcnn localize``.

1. A classification network: the registry's backbone (ImageNet weights), its whole convolutional
   part (stride 32, frozen batch norms); a linear classifier over the pooled features for the
   dataset's classes. An image's class is that of its largest object.
2. A fully connected regression head beside it: ``attach="fc"`` on the pooled features (after the
   last FC-like layer, as DeepPose and R-CNN) or ``attach="conv"`` on the last convolutional map
   (as Overfeat and VGG: a 1x1 convolution to 64 channels, then the FC layers on the flattened map); ``boxes="agnostic"`` (4 numbers per box) or
   ``"specific"`` (C x 4: one box per class); ``k`` boxes per image (the image's ``k`` largest
   objects, largest first; slots beyond an image's objects are left out of the loss).
3. Training: ``head_only`` trains the two heads with SGD on frozen features (cached in HDF5, so a
   head trains in seconds on a CPU); otherwise the network is fine-tuned end to end (the registry's
   first modules stay frozen; the pretrained trunk at ``trunk_lr_mult`` x the heads' learning rate:
   at the same rate it collapsed on the built-in shapes, 72-80 % classification error). Losses:
   cross-entropy (classes) and L2 (boxes).
4. Test: both heads; the top-5 ``(class, box, score)`` guesses per image slot (score: the class
   probability), boxes mapped back to the original image's pixels.

Box targets are ``x1, y1, x2, y2`` normalised by the image's width and height; the image is resized
to a square ``input_size`` (224) before the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.method import Method, ModelConfig

__all__ = ["LocalizerConfig", "Localizer", "localization_targets", "LocalizerDetector", "train_localizer",
           "TRAIN_DEFAULTS"]

MODEL_VERSION = 1
#: The method's one name: its runs' kind and command group.
NAME = "localize"
TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 16, "lr": 0.01, "weight_decay": 1e-4, "warmup_iters": 20}


@dataclass
class LocalizerConfig(ModelConfig):
    """Everything needed to rebuild a localizer (the run's ``model`` record); validates itself."""

    kind: str = "localizer"
    version: int = MODEL_VERSION
    boxes: str = "agnostic"     # "agnostic" (4 numbers per box) or "specific" (C x 4)
    attach: str = "fc"          # "fc" (pooled features) or "conv" (the last convolutional map)
    k: int = 1                  # boxes per image
    input_size: int = 224
    hidden: int = 256
    head_only: bool = False
    lambda_box: float = 10.0    # weight of the L2 box loss beside the cross-entropy
    trunk_lr_mult: float = 0.1  # fine-tuning end to end: the pretrained trunk learns at 0.1 x --lr
    guesses: int = 5            # (class, box) guesses per box slot at test time
    background: bool = False    # a background class after the C classes (Overfeat's windows)
    trained_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rcnn_cli.backbones import get_spec

        get_spec(self.backbone)
        self.classes = list(self.classes)
        if self.boxes not in ("agnostic", "specific"):
            raise UserError(f"--boxes must be agnostic or specific (got '{self.boxes}')")
        if self.attach not in ("fc", "conv"):
            raise UserError(f"--attach must be fc or conv (got '{self.attach}')")
        if int(self.k) < 1 or int(self.input_size) < 32 or int(self.input_size) % 32:
            raise UserError(f"--k must be >= 1 and --input-size a multiple of 32 (got {self.k}, {self.input_size})")


def localization_targets(boxes: torch.Tensor, labels: torch.Tensor, width: float, height: float, k: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest objects of an image: normalised boxes ``(k, 4)`` and labels ``(k,)`` in
    ``0..C-1``, largest first; ``-1`` labels (and zero boxes) where the image has fewer objects."""
    out_boxes, out_labels = torch.zeros(k, 4), torch.full((k,), -1, dtype=torch.long)
    if len(boxes):
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = torch.argsort(area, descending=True, stable=True)[:k]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        out_boxes[: len(order)] = boxes[order].float().cpu() / scale
        out_labels[: len(order)] = labels[order].cpu()
    return out_boxes, out_labels


class Localizer(nn.Module):
    """Trunk + classification head + regression head.

    ``forward(inputs, targets=None)``: ``inputs`` images ``(3, H, W)`` in [0, 1], or trunk feature
    maps when ``from_features`` is set (head-only training on cached features). Train mode: the
    losses ``loss_class`` and ``loss_box`` (target labels ``0..C-1``, ``C`` background, ``-1`` left
    out); eval mode: ``(class logits (N, k, C [+ 1 background]), boxes (N, k, C', 4))`` with ``C' = C``
    for class-specific boxes, else 1 (normalised ``x1, y1, x2, y2``).
    """

    def __init__(self, cfg: LocalizerConfig, weights: str = "imagenet") -> None:
        from rcnn_cli.backbones import build_dense_trunk, freeze_leading, get_spec

        super().__init__()
        self.rcnn_config, self.from_features = cfg, False
        spec = get_spec(cfg.backbone)
        self.trunk, ch, stride = build_dense_trunk(cfg.backbone, weights, freeze_bn=True)
        if cfg.head_only:
            for p in self.trunk.parameters():
                p.requires_grad_(False)
        else:
            freeze_leading(self.trunk, spec.frozen_modules)
        c, cells = len(cfg.classes), (cfg.input_size // stride) ** 2
        self.classifier = nn.Linear(ch, cfg.k * (c + cfg.background))
        per_box = 4 * (c if cfg.boxes == "specific" else 1)
        # conv: a 1x1 convolution to 64 channels keeps where things are on the map at a size an FC layer fits
        self.reduce = nn.Sequential(nn.Conv2d(ch, 64, 1), nn.ReLU(inplace=True)) if cfg.attach == "conv" else None
        self.regressor = nn.Sequential(nn.Linear(64 * cells if self.reduce is not None else ch, cfg.hidden),
                                       nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.k * per_box))

    def features(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images -> trunk feature maps ``(N, C, S/32, S/32)`` of the ``input_size`` squares."""
        from rcnn_cli.backbones import get_spec, square_batch

        cfg = self.rcnn_config
        return self.trunk(square_batch(images, cfg.input_size, get_spec(cfg.backbone)))

    def heads(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, n = self.rcnn_config, fmap.shape[0]
        pooled = fmap.mean(dim=(2, 3))
        logits = self.classifier(pooled).view(n, cfg.k, -1)
        reg_in = self.reduce(fmap).flatten(1) if self.reduce is not None else pooled
        boxes = self.regressor(reg_in).view(n, cfg.k, -1, 4)
        return logits, boxes

    def forward(self, inputs: Sequence[torch.Tensor], targets: Sequence[dict] | None = None):
        fmap = torch.stack(list(inputs)) if self.from_features else self.features(inputs)
        logits, boxes = self.heads(fmap)
        if not self.training:
            return logits, boxes
        tb = torch.stack([t["loc_boxes"] for t in targets]).to(boxes)  # (N, k, 4)
        tl = torch.stack([t["loc_labels"] for t in targets]).to(logits.device)  # (N, k)
        c = len(self.rcnn_config.classes)
        valid, objects = tl >= 0, (tl >= 0) & (tl < c)  # label c: background (no box)
        if boxes.shape[2] > 1:  # class-specific: the box of the true class
            boxes = boxes.gather(2, tl.clamp(0, c - 1)[..., None, None].expand(-1, -1, 1, 4))
        err = ((boxes[:, :, 0] - tb) ** 2).sum(-1)
        n, n_obj = max(int(valid.sum()), 1), max(int(objects.sum()), 1)
        return {"loss_class": F.cross_entropy(logits[valid], tl[valid], reduction="sum") / n,
                "loss_box": self.rcnn_config.lambda_box * (err * objects).sum() / n_obj}


# --------------------------------------------------------------------------------------------
# Data


class LocalizationDataset(torch.utils.data.Dataset):
    """Items ``(image or cached feature map, target)``; ``target`` adds ``loc_boxes`` ``(k, 4)``
    (normalised) and ``loc_labels`` ``(k,)`` (``0..C-1``, ``-1`` for empty slots) to the detection
    target. Images without objects are left out (with a warning)."""

    def __init__(self, dataset, k: int, flip: bool = True, seed: int = 0, features: dict | None = None) -> None:
        from rcnn_cli.engine.dataset import DetectionDataset

        empty = [r.image_id for r in dataset.records if not len(r.boxes)]
        if empty:
            logger.warning("%d image(s) without objects left out of localization training (e.g. %s)",
                           len(empty), empty[0])
        kept = [r for r in dataset.records if len(r.boxes)]
        if not kept:
            raise UserError("no image of the split has an object to localize")
        subset = type(dataset)(dataset.root, dataset.split, dataset.classes, kept)
        self.base = DetectionDataset(subset, flip=flip and features is None, seed=seed)
        self.k, self.features = int(k), features
        self.cached = [self._cached_item(subset, r) for r in kept] if features is not None else None

    def _cached_item(self, subset, record):
        """``(feature map, target)`` of a record from the annotation alone (no image decoding)."""
        boxes, labels = subset.training_targets(record)
        target = {"image_id": record.image_id}
        target["loc_boxes"], target["loc_labels"] = localization_targets(
            torch.from_numpy(boxes), torch.from_numpy(labels) - 1, record.width, record.height, self.k)
        return self.features[record.image_id], target

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        if self.cached is not None:
            return self.cached[index]
        image, target = self.base[index]
        h, w = image.shape[-2:]
        target["loc_boxes"], target["loc_labels"] = localization_targets(target["boxes"], target["labels"] - 1, w, h,
                                                                         self.k)
        return image, target


@torch.no_grad()
def cache_features(model: Localizer, dataset, path: Path, progress: bool = False) -> dict[str, torch.Tensor]:
    """Trunk feature maps of every image of ``dataset`` (HDF5 ``path``, reused when its key matches)."""
    import h5py

    from rcnn_cli.data.images import load_image, to_tensor
    from rcnn_cli.io.files import atomic_path
    from rcnn_cli.io.hdf5 import escape_id

    cfg = model.rcnn_config
    key = f"{cfg.backbone}|{cfg.weights_id}|{cfg.input_size}"
    ids = [r.image_id for r in dataset.records]
    if path.is_file():
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") == key and all(escape_id(i) in f for i in ids):
                return {i: torch.from_numpy(f[escape_id(i)][()]) for i in ids}
    model.eval()
    out = {}
    t0 = time.perf_counter()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["key"] = key
        for rec in dataset.records:
            fmap = model.features([to_tensor(load_image(rec.path))])[0].float().contiguous()
            f[escape_id(rec.image_id)] = fmap.numpy()
            out[rec.image_id] = fmap
    logger.info("cached the features of %d images in %.1f s: %s", len(ids), time.perf_counter() - t0, path)
    return out


# --------------------------------------------------------------------------------------------
# Training and the detector


def _model_config_from(run_dir: Path) -> LocalizerConfig:
    from rcnn_cli.io.runs import model_config

    return model_config(run_dir, NAME, LocalizerConfig)


def train_localizer(dataset_path: str | Path, split: str | None, out: str | Path, model: LocalizerConfig | None,
                    train_config, *, images: str | Path | None = None, resume: bool = False,
                    command: str = "rcnn localize train", sources: dict[str, str] | None = None) -> dict:
    """Train a localizer (``model``: its :class:`LocalizerConfig`, the classes taken from the data;
    ``None``: the defaults) on :func:`rcnn_cli.engine.train` with ``train_config``. Head-only training
    caches the trunk's features in ``out/features.h5``. Returns the engine's summary (+
    ``"model_config"``)."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import load_training_dataset, training_split
    from rcnn_cli.engine import train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if resume and (out / "config.json").is_file():
        cfg = _model_config_from(out)
    else:
        cfg = replace(model or LocalizerConfig(), classes=list(ds.classes))
        cfg.weights_id = weights_id(cfg.backbone, cfg.weights)
        cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records)}
    seed_everything(train_config.seed)
    network = Localizer(cfg, cfg.weights)
    features = cache_features(network, ds, out / "features.h5") if cfg.head_only else None
    data = LocalizationDataset(ds, cfg.k, seed=train_config.seed, features=features)
    network.from_features = features is not None
    groups = None if cfg.head_only else [
        {"params": list(network.trunk.parameters()), "lr_mult": float(cfg.trunk_lr_mult)},
        {"params": [p for n, p in network.named_parameters() if not n.startswith("trunk.")]}]
    try:
        summary = train(network, data, out, train_config, resume=resume, model_config=cfg, command=command,
                        kind=NAME, sources=sources, param_groups=groups)
    finally:
        network.from_features = False
    summary["model_config"] = cfg.to_dict()
    return summary


class LocalizerDetector(Detector):
    """A trained localizer: per box slot the top ``guesses`` classes, each with its box (the class's
    own box when class-specific) and its probability as the score; no NMS. Timings: ``"network"``
    and ``"post"``."""

    kind = NAME
    weights = "final"

    def __init__(self, model: Localizer, config: DetectSettings = None) -> None:
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.device = next(model.parameters()).device
        self.classes = list(model.rcnn_config.classes)
        self.config = settings_in_effect(config, DetectConfig(score_threshold=0.0))

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 weights: str = "final") -> "LocalizerDetector":
        from rcnn_cli.io.runs import load_weights
        from rcnn_cli.device import resolve_device

        model = load_weights(Localizer(_model_config_from(Path(run_dir)), weights="none"), run_dir, weights)
        detector = cls(model.to(resolve_device(device)), config)
        detector.weights = weights
        return detector

    def settings(self) -> dict:
        cfg = self.model.rcnn_config
        return dict(super().settings(), weights=self.weights, boxes=cfg.boxes, attach=cfg.attach, k=cfg.k,
                    guesses=cfg.guesses)

    @torch.inference_mode()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        logits, boxes = self.model([to_tensor(image).to(self.device)])
        t1 = time.perf_counter()
        b, s, labels = self.guesses(logits[0].float(), boxes[0].float(), *image.size)
        det = ImageDetections(image_id, b, s, [self.classes[i] for i in labels])
        det.timings = {"network": t1 - t0, "post": time.perf_counter() - t1}
        return det

    def guesses(self, logits: torch.Tensor, boxes: torch.Tensor, width: int, height: int):
        """``logits (k, C)``, ``boxes (k, C', 4)`` normalised -> boxes ``(G, 4)`` pixels (corners put in
        order, clipped to the image), scores, labels."""
        from torchvision.ops import clip_boxes_to_image

        from rcnn_cli.boxes import order_corners

        g = min(self.model.rcnn_config.guesses, logits.shape[1])
        probs, cls = torch.softmax(logits, -1).topk(g, dim=-1)  # (k, g)
        pick = cls if boxes.shape[1] > 1 else torch.zeros_like(cls)
        chosen = boxes.gather(1, pick[..., None].expand(-1, -1, 4))  # (k, g, 4)
        scale = torch.tensor([width, height, width, height], dtype=chosen.dtype, device=chosen.device)
        px = clip_boxes_to_image(order_corners(chosen.reshape(-1, 4) * scale), (height, width))
        scores, labels = probs.reshape(-1), cls.reshape(-1)
        order = torch.argsort(scores, descending=True)
        keep = order[scores[order] >= self.config.score_threshold][: self.config.top_k]
        return px[keep].cpu().numpy().astype(np.float32), scores[keep].cpu().numpy(), labels[keep].cpu().tolist()


METHOD = Method(name=NAME, title="Classification + localization", detector=LocalizerDetector, config=LocalizerConfig)
