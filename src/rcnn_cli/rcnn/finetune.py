"""R-CNN fine-tuning (the paper's step 2): the backbone plus an ``N+1``-way classifier on warped regions.

Regions are an image's proposals plus its ground-truth boxes. A region with IoU >= 0.5 to a ground
truth takes that ground truth's class, every other region is background. Each minibatch has 128
regions, 32 foreground and 96 background, drawn across the training images (as R-CNN's window data
layer does); warping is R-CNN's (:func:`rcnn_cli.rcnn.features.warp_regions`, context padding), and a
random half of the crops are flipped horizontally. SGD with lr 0.001, momentum 0.9, weight decay
5e-4 (the new classifier learns 10x faster, as the paper's fc8); batch-norm statistics stay frozen
(a 128-crop batch of one dataset would pull them away from ImageNet's).

One epoch is one pass over the foreground regions (each seen once; background regions are drawn
without replacement and reshuffled when used up). Batch ``i`` of epoch ``e`` depends only on
``(seed, e, i)``, so ``--resume`` from a checkpoint continues exactly.

Outputs in ``out``: ``model.safetensors`` (exactly the feature extractor's ``state_dict``: a valid
``--weights`` for ``extract-features``), ``classifier.safetensors``, ``config.json`` (run record),
``metrics.jsonl`` and ``checkpoint/`` (per epoch and every ``checkpoint_every`` iterations).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rcnn_cli.boxes import iou_matrix
from rcnn_cli.errors import UserError
from rcnn_cli.io.files import jsonable
from rcnn_cli.log import logger, progress_bar
from rcnn_cli.method import DEFAULT_BACKBONE, Method

#: The name of a fine-tuning run's kind (a feature network, not a detector).
NAME = "finetune"


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (defaults are the paper's)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    layer: str | None = None
    warp_size: int | None = None
    padding: int = 16
    epochs: int = 1
    max_iters: int | None = None
    lr: float = 0.001
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: tuple[int, ...] | None = ()  # epochs at which lr drops 10x (None: the trainer's default)
    batch_size: int = 128
    fg_per_batch: int = 32
    fg_overlap: float = 0.5
    flip: bool = True
    max_proposals: int | None = None  # per image, top of the ranking
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200  # iterations between checkpoints (0: once per epoch)
    log_every: int = 1
    progress: bool = True


class FinetuneNet(nn.Module):
    """``features`` (the backbone feature extractor) followed by ``classifier`` (``D -> K+1``)."""

    def __init__(self, features: nn.Module, num_classes: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(features.out_dim, num_classes + 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def train(self, mode: bool = True) -> "FinetuneNet":
        super().train(mode)
        for m in self.modules():  # frozen batch-norm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


@dataclass
class RegionTable:
    """All training regions: image index, box (pixels), class (0 = background)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    records: list = field(default_factory=list)


def build_regions(dataset, proposals, max_proposals: int | None = None, fg_overlap: float = 0.5) -> RegionTable:
    """Label every proposal (plus the ground-truth boxes) of every image of ``dataset``."""
    from rcnn_cli.data.images import image_size

    imgs, boxes, labels, records = [], [], [], []
    missing = 0
    for record in dataset.records:
        if record.image_id not in proposals:
            missing += 1
            continue
        try:
            w, h = proposals.image_size(record.image_id)
        except Exception:  # noqa: BLE001 - fall back on the file header
            w, h = image_size(record.path)
        gt_boxes, gt_labels = dataset.training_targets(record, w, h)
        props = np.asarray(proposals.boxes(record.image_id), np.float32).reshape(-1, 4)
        if max_proposals is not None:
            props = props[:max_proposals]
        b = np.concatenate([gt_boxes, props]).astype(np.float32)
        lab = np.zeros(len(b), np.int64)
        if len(gt_boxes):
            iou = iou_matrix(b, gt_boxes)
            best = iou.argmax(axis=1)
            fg = iou[np.arange(len(b)), best] >= fg_overlap
            lab[fg] = gt_labels[best[fg]]
        idx = len(records)
        records.append(record)
        imgs.append(np.full(len(b), idx, np.int64))
        boxes.append(b)
        labels.append(lab)
    if missing:
        logger.warning("%d of %d images have no proposals in the proposals file: skipped", missing, len(dataset))
    if not records:
        raise UserError("no training image has proposals (wrong --proposals file or --split?)")
    return RegionTable(np.concatenate(imgs), np.concatenate(boxes), np.concatenate(labels), records)


class _ImageCache:
    """Decoded images as uint8 tensors, kept while under ``budget`` bytes."""

    def __init__(self, records: list, budget: int = 2 << 30):
        self.records, self.budget, self.used, self.cache = records, budget, 0, {}

    def get(self, idx: int) -> torch.Tensor:
        if idx in self.cache:
            return self.cache[idx]
        from rcnn_cli.data.images import load_image

        img = load_image(self.records[idx].path)
        t = torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1)
        if self.used + t.numel() <= self.budget:
            self.cache[idx] = t
            self.used += t.numel()
        return t


def _batch_indices(table: RegionTable, fg_idx: np.ndarray, bg_idx: np.ndarray, cfg: FinetuneConfig, epoch: int,
                   it: int) -> tuple[np.ndarray, np.ndarray]:
    """Regions of batch ``it`` of ``epoch`` and a flip mask: a pure function of ``(seed, epoch, it)``."""
    n_fg = min(cfg.fg_per_batch, len(fg_idx))
    n_bg = cfg.batch_size - n_fg
    fg_perm = np.random.default_rng([cfg.seed, epoch, 0]).permutation(len(fg_idx))
    start = it * cfg.fg_per_batch
    fg_sel = fg_idx[fg_perm[np.arange(start, start + n_fg) % len(fg_idx)]]
    # background: consecutive slices of reshuffled permutations (cycle c covers it * n_bg // len(bg) ...)
    pos = it * n_bg
    picks = []
    while len(picks) < n_bg and len(bg_idx):
        cycle, offset = divmod(pos, len(bg_idx))
        perm = np.random.default_rng([cfg.seed, epoch, 1, cycle]).permutation(len(bg_idx))
        take = min(n_bg - len(picks), len(bg_idx) - offset)
        picks.extend(perm[offset:offset + take].tolist())
        pos += take
    sel = np.concatenate([fg_sel, bg_idx[np.asarray(picks, np.int64)]]) if picks else fg_sel
    flip = np.random.default_rng([cfg.seed, epoch, 2, it]).random(len(sel)) < 0.5 if cfg.flip else np.zeros(len(sel), bool)
    return sel, flip


def warp_batch(table: RegionTable, sel: np.ndarray, flip: np.ndarray, images: _ImageCache, spec, warp_size: int,
               padding: int) -> torch.Tensor:
    """Warped, normalised crops ``(B, 3, S, S)`` of the selected regions (flipped where asked)."""
    from rcnn_cli.backbones import normalize
    from rcnn_cli.rcnn.features import warp_regions

    crops = torch.empty((len(sel), 3, warp_size, warp_size))
    for idx in np.unique(table.image[sel]):
        rows = np.flatnonzero(table.image[sel] == idx)
        img = normalize(images.get(int(idx)).float().div_(255.0), spec)
        crops[rows] = warp_regions(img, torch.from_numpy(table.boxes[sel[rows]]), warp_size, padding)
    if flip.any():
        f = torch.from_numpy(flip)
        crops[f] = crops[f].flip(-1)
    return crops


def _region_table(dataset, proposals, cfg: FinetuneConfig) -> tuple[RegionTable, np.ndarray, np.ndarray, dict]:
    """The regions of ``dataset`` with ``proposals`` (a reader or a path): the table, the indices of
    the foreground and background regions, and the proposals file's attributes."""
    from rcnn_cli import proposals as P

    own_reader = isinstance(proposals, (str, Path))
    reader = P.load(proposals) if own_reader else proposals
    try:
        table = build_regions(dataset, reader, cfg.max_proposals, cfg.fg_overlap)
        attrs = jsonable(getattr(reader, "attrs", {}))
    finally:
        if own_reader:
            reader.close()
    fg_idx, bg_idx = np.flatnonzero(table.labels > 0), np.flatnonzero(table.labels == 0)
    if len(fg_idx) == 0:
        raise UserError("no foreground regions (IoU >= %.2f with a ground truth) to fine-tune on" % cfg.fg_overlap)
    return table, fg_idx, bg_idx, attrs


class RegionBatches(torch.utils.data.Dataset):
    """The fine-tuning minibatches of an epoch for the trainer: item ``i`` is batch ``i``,
    ``(crops (B, 3, S, S) normalised, {"labels": (B,) int64})``, a pure function of ``(seed, epoch, i)``."""

    def __init__(self, table: RegionTable, fg_idx: np.ndarray, bg_idx: np.ndarray, cfg: FinetuneConfig, spec,
                 warp: int) -> None:
        self.table, self.fg_idx, self.bg_idx, self.cfg, self.spec, self.warp = table, fg_idx, bg_idx, cfg, spec, warp
        self.images = _ImageCache(table.records)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.fg_idx) / self.cfg.fg_per_batch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sel, flip = _batch_indices(self.table, self.fg_idx, self.bg_idx, self.cfg, self.epoch, i)
        crops = warp_batch(self.table, sel, flip, self.images, self.spec, self.warp, self.cfg.padding)
        return crops, {"labels": torch.from_numpy(self.table.labels[sel])}


class _RegionLoss(nn.Module):
    """The trainer's view of :class:`FinetuneNet`: ``(images=[crops], targets=[{"labels"}]) -> losses``."""

    def __init__(self, net: FinetuneNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        logits = self.net(torch.cat(images))
        return {"loss_classifier": nn.functional.cross_entropy(logits, torch.cat([t["labels"] for t in targets]))}


def _one_batch(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    crops, target = batch[0]
    return [crops], [target]


def _train_config(cfg: FinetuneConfig):
    from rcnn_cli.engine import TrainConfig

    return TrainConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       lr_steps=cfg.lr_steps, warmup_iters=0, batch_size=1, seed=cfg.seed, device=cfg.device,
                       max_iters=cfg.max_iters, clip_grad=None, log_every=cfg.log_every, progress=cfg.progress,
                       checkpoint_every=cfg.checkpoint_every)


def _check_resume(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """A checkpoint in ``out`` continues only with ``--resume`` and the same settings."""
    from rcnn_cli.engine import find_checkpoint
    from rcnn_cli.io.runs import read_run

    if find_checkpoint(out) is None:
        return
    if not resume:
        raise UserError(f"{out} holds a fine-tuning checkpoint: pass --resume to continue it, or choose another --out")
    if _resume_key(read_run(out).model) != _resume_key(jsonable(settings)):
        raise UserError(f"{out}: the checkpoint was made with other settings; use another --out or drop --resume")


def finetune(dataset, proposals, out: str | Path, config: FinetuneConfig | None = None, resume: bool = False,
             progress: bool = True, command: str = "rcnn finetune") -> dict[str, Any]:
    """Fine-tune ``config.backbone`` on warped regions of ``dataset`` (labelled) with ``proposals``
    (a reader or a path), on the one trainer (:func:`rcnn_cli.engine.train`: checkpoints, exact
    resume, schedule in epochs, ``metrics.jsonl``, DDP). Returns a summary (iterations, final loss,
    seconds, output paths)."""
    from rcnn_cli.backbones import build_feature_extractor, get_spec, weights_id
    from rcnn_cli.engine import train
    from rcnn_cli.io.files import write_json
    from rcnn_cli.io.tensors import save_state

    cfg = replace(config or FinetuneConfig(), progress=progress)
    out = Path(out)
    spec = get_spec(cfg.backbone)
    warp, layer = int(cfg.warp_size or spec.native_size), cfg.layer or spec.default_layer
    if not 0 < cfg.fg_per_batch <= cfg.batch_size:
        raise UserError(f"--fg-per-batch must be in 1..{cfg.batch_size}")
    table, fg_idx, bg_idx, proposal_attrs = _region_table(dataset, proposals, cfg)
    settings = dict(asdict(cfg), warp_size=warp, layer=layer, weights_id=weights_id(cfg.backbone, cfg.weights),
                    classes=list(dataset.classes), proposals_attrs=proposal_attrs)
    for key in ("device", "progress"):
        settings.pop(key)
    _check_resume(out, settings, resume)
    torch.manual_seed(cfg.seed)
    net = FinetuneNet(build_feature_extractor(cfg.backbone, cfg.weights, layer), len(dataset.classes))
    head = list(net.classifier.parameters())
    body = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    batches = RegionBatches(table, fg_idx, bg_idx, cfg, spec, warp)
    logger.info("fine-tuning %s on %d regions (%d foreground) of %d images: %d iterations per epoch, warp %d",
                cfg.backbone, len(table.labels), len(fg_idx), len(table.records), len(batches), warp)
    t0 = time.perf_counter()
    result = train(_RegionLoss(net), batches, out, _train_config(cfg), collate_fn=_one_batch, resume=resume,
                   model_config=jsonable(settings), command=command, kind=NAME,
                   param_groups=[{"params": body, "lr_mult": 1.0}, {"params": head, "lr_mult": cfg.head_lr_mult}])
    net.eval()
    save_state(net.features, out / "model.safetensors")  # exactly the feature extractor's state dict
    save_state(net.classifier, out / "classifier.safetensors")
    summary = {"iterations": result["iterations"], "iterations_per_epoch": len(batches),
               "regions": int(len(table.labels)), "foreground": int(len(fg_idx)),
               "seconds": time.perf_counter() - t0, "last": result["losses"],
               "weights": str(out / "model.safetensors"),
               "weights_id": weights_id(cfg.backbone, out / "model.safetensors")}
    write_json(out / "summary.json", summary)
    return summary


def _resume_key(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match to resume (the run length and checkpoint period may change)."""
    return {k: v for k, v in settings.items() if k not in ("epochs", "max_iters", "checkpoint_every")}


def export_backbone(run_dir: str | Path, out: str | Path, trained_layers) -> dict[str, Any]:
    """Write the backbone of a trained ``rcnn fast`` / ``rcnn faster`` run as R-CNN ``--weights``.

    Training a detector fine-tunes its trunk (and, with ``--head backbone``, the layers after it)
    on the dataset, far more cheaply than :func:`finetune` on warped regions: one trunk pass per
    image instead of one per region. ``out`` (``.safetensors``) is a feature extractor
    ``state_dict``; layers the detector did not train (those after the trunk when its head was an
    MLP) keep ImageNet weights. ``trained_layers(run) -> (trunk, head)`` takes them from the run (the
    run's method's ``backbone``). Returns ``{"backbone", "head", "trained_layers", "weights_id"}``.
    """
    from rcnn_cli.backbones import feature_state_from_detector, weights_id
    from rcnn_cli.io import write_run_record
    from rcnn_cli.io.runs import read_run
    from rcnn_cli.io.tensors import save_tensors

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the weights file must end in .safetensors")
    run = read_run(run_dir)
    model_cfg = run.model
    if model_cfg.get("fpn"):
        raise UserError(f"{run_dir}: a feature-pyramid model has no single-layer backbone to export")
    trunk, head = trained_layers(run)
    name = str(model_cfg["backbone"])
    state, with_head = feature_state_from_detector(name, trunk, head)
    trained = "trunk and head" if with_head else "trunk (the layers after it are ImageNet's)"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(out, state, metadata={"format": "rcnn-feature-net", "backbone": name})
    info = {"backbone": name, "head": model_cfg.get("head"), "trained_layers": trained,
            "weights_id": weights_id(name, out)}
    write_run_record(out, "rcnn export-backbone", {"run": str(run_dir), **info})
    logger.info("exported the %s %s of %s", name, trained, run_dir)
    return info


METHOD = Method(name=NAME, title="R-CNN fine-tuning (a feature network, not a detector)")
