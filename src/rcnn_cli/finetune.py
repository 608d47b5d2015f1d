"""R-CNN fine-tuning (the paper's step 2): the backbone plus an ``N+1``-way classifier on warped regions.

Regions are an image's proposals plus its ground-truth boxes. A region with IoU >= 0.5 to a ground
truth takes that ground truth's class, every other region is background. Each minibatch has 128
regions, 32 foreground and 96 background, drawn across the training images (as R-CNN's window data
layer does); warping is R-CNN's (:func:`rcnn_cli.features.warp_regions`, context padding), and a
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rcnn_cli.boxes import iou_matrix
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger, progress_bar


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (defaults are the paper's)."""

    backbone: str = "efficientnet_lite0"
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
    lr_steps: tuple[int, ...] = ()  # iterations at which lr drops 10x
    batch_size: int = 128
    fg_per_batch: int = 32
    fg_overlap: float = 0.5
    flip: bool = True
    max_proposals: int | None = None  # per image, top of the ranking
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200


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
    from rcnn_cli.features import warp_regions

    crops = torch.empty((len(sel), 3, warp_size, warp_size))
    for idx in np.unique(table.image[sel]):
        rows = np.flatnonzero(table.image[sel] == idx)
        img = normalize(images.get(int(idx)).float().div_(255.0), spec)
        crops[rows] = warp_regions(img, torch.from_numpy(table.boxes[sel[rows]]), warp_size, padding)
    if flip.any():
        f = torch.from_numpy(flip)
        crops[f] = crops[f].flip(-1)
    return crops


def finetune(dataset, proposals, out: str | Path, config: FinetuneConfig | None = None, resume: bool = False,
             progress: bool = True, command: str = "rcnn finetune") -> dict[str, Any]:
    """Fine-tune ``config.backbone`` on warped regions of ``dataset`` (labelled) with ``proposals``.

    ``proposals``: a :class:`rcnn_cli.proposals.ProposalReader` or a path. Returns a summary
    (iterations, final loss, accuracy, seconds, output paths).
    """
    from rcnn_cli import proposals as P
    from rcnn_cli.backbones import build_feature_extractor, get_spec, weights_id
    from rcnn_cli.engine import _find_checkpoint, _load_checkpoint, _write_checkpoint, resolve_device, save_weights
    from rcnn_cli.io import write_json, write_run_record

    cfg = config or FinetuneConfig()
    out = Path(out)
    spec = get_spec(cfg.backbone)
    warp = int(cfg.warp_size or spec.native_size)
    layer = cfg.layer or spec.default_layer
    if not 0 < cfg.fg_per_batch <= cfg.batch_size:
        raise UserError(f"--fg-per-batch must be in 1..{cfg.batch_size}")
    own_reader = not hasattr(proposals, "boxes")
    reader = P.load(proposals) if own_reader else proposals
    try:
        table = build_regions(dataset, reader, cfg.max_proposals, cfg.fg_overlap)
    finally:
        if own_reader:
            reader.close()
    fg_idx = np.flatnonzero(table.labels > 0)
    bg_idx = np.flatnonzero(table.labels == 0)
    if len(fg_idx) == 0:
        raise UserError("no foreground regions (IoU >= %.2f with a ground truth) to fine-tune on" % cfg.fg_overlap)
    iters_per_epoch = math.ceil(len(fg_idx) / cfg.fg_per_batch)
    total = cfg.epochs * iters_per_epoch
    if cfg.max_iters is not None:
        total = min(total, int(cfg.max_iters))
    settings = dict(asdict(cfg), warp_size=warp, layer=layer, weights_id=weights_id(cfg.backbone, cfg.weights),
                    classes=list(dataset.classes), proposals_attrs=_jsonable(getattr(reader, "attrs", {})))
    settings.pop("device")
    out.mkdir(parents=True, exist_ok=True)

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = FinetuneNet(build_feature_extractor(cfg.backbone, cfg.weights, layer), len(dataset.classes)).to(device)
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    optimizer = torch.optim.SGD([{"params": body, "lr_mult": 1.0}, {"params": head, "lr_mult": cfg.head_lr_mult}],
                                lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start = 0
    ckpt = _find_checkpoint(out)
    if resume and ckpt is not None:
        state = _load_checkpoint(ckpt, model, optimizer)
        if _resume_key(state.get("settings", {})) != _resume_key(_jsonable(settings)):
            raise UserError(f"{out}: the checkpoint was made with other settings; use another --out or drop --resume")
        start = int(state["iteration"])
        logger.info("resuming fine-tuning at iteration %d of %d", start, total)
    elif ckpt is not None and not resume:
        raise UserError(f"{out} holds a fine-tuning checkpoint: pass --resume to continue it, or choose another --out")
    metrics_path = out / "metrics.jsonl"
    if start == 0 and metrics_path.exists():
        metrics_path.unlink()

    images = _ImageCache(table.records)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    ema_loss, ema_acc, last = None, None, {}
    logger.info("fine-tuning %s on %d regions (%d foreground) of %d images: %d iterations (%d per epoch), warp %d",
                cfg.backbone, len(table.labels), len(fg_idx), len(table.records), total, iters_per_epoch, warp)
    with progress_bar(progress) as bar, open(metrics_path, "a", encoding="utf-8") as mf:
        task = bar.add_task("finetune", total=total, completed=start, status="")
        for it_global in range(start, total):
            epoch, it = divmod(it_global, iters_per_epoch)
            lr = cfg.lr * (0.1 ** sum(it_global >= s for s in cfg.lr_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            sel, flip = _batch_indices(table, fg_idx, bg_idx, cfg, epoch, it)
            crops = warp_batch(table, sel, flip, images, spec, warp, cfg.padding).to(device)
            target = torch.from_numpy(table.labels[sel]).to(device)
            torch.manual_seed(hash((cfg.seed, epoch, it)) & 0x7FFFFFFF)  # dropout: a function of the batch
            logits = model(crops)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise UserError(f"fine-tuning diverged at iteration {it_global} (loss {lv}); lower --lr")
            acc = float((logits.detach().argmax(1) == target).float().mean())
            ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
            ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
            last = {"iteration": it_global + 1, "epoch": epoch, "loss": lv, "accuracy": acc, "lr": lr}
            mf.write(json.dumps(last) + "\n")
            mf.flush()
            bar.update(task, advance=1, status=f"epoch {epoch + 1} loss {ema_loss:.3f} acc {ema_acc:.2f}")
            done = it_global + 1
            if done == total or done % iters_per_epoch == 0 or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                _write_checkpoint(out, model, optimizer, {"iteration": done, "epoch": done / iters_per_epoch,
                                                          "settings": _jsonable(settings), "last": last})
    model.eval()
    save_weights(model.features, out / "model.safetensors")
    save_weights(model.classifier, out / "classifier.safetensors")
    summary = {"iterations": total, "iterations_per_epoch": iters_per_epoch, "regions": int(len(table.labels)),
               "foreground": int(len(fg_idx)), "seconds": time.perf_counter() - t0, "last": last,
               "weights": str(out / "model.safetensors"),
               "weights_id": weights_id(cfg.backbone, out / "model.safetensors")}
    write_run_record(out, command, dict(settings, summary=summary))
    write_json(out / "summary.json", summary)
    return summary


def _resume_key(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match to resume (the run length and checkpoint period may change)."""
    return {k: v for k, v in settings.items() if k not in ("epochs", "max_iters", "checkpoint_every")}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def export_backbone(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the backbone of a trained ``rcnn fast`` / ``rcnn faster`` run as R-CNN ``--weights``.

    Training a detector fine-tunes its trunk (and, with ``--head backbone``, the layers after it)
    on the dataset, far more cheaply than :func:`finetune` on warped regions: one trunk pass per
    image instead of one per region. ``out`` (``.safetensors``) is a feature extractor
    ``state_dict``; layers the detector did not train (those after the trunk when its head was an
    MLP) keep ImageNet weights. Returns ``{"backbone", "head", "trained_layers", "weights_id"}``.
    """
    from safetensors.torch import save_file

    from rcnn_cli.backbones import feature_state_from_detector, weights_id
    from rcnn_cli.engine import read_run_config
    from rcnn_cli.io import atomic_path, write_run_record

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the weights file must end in .safetensors")
    model_cfg = read_run_config(run_dir)["model"]
    if model_cfg.get("fpn"):
        raise UserError(f"{run_dir}: a feature-pyramid model has no single-layer backbone to export")
    if model_cfg.get("kind") == "faster_rcnn":
        from rcnn_cli.models.faster_rcnn import load_model

        model, _ = load_model(run_dir)
        trunk, head = model.backbone.body, model.roi_heads.box_head
    else:
        from rcnn_cli.models.fast_rcnn import load_fast_rcnn

        model = load_fast_rcnn(run_dir)
        trunk, head = model.trunk, model.head
    name = str(model_cfg["backbone"])
    state, with_head = feature_state_from_detector(name, trunk, head)
    trained = "trunk and head" if with_head else "trunk (the layers after it are ImageNet's)"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "rcnn-feature-net", "backbone": name})
    info = {"backbone": name, "head": model_cfg.get("head"), "trained_layers": trained,
            "weights_id": weights_id(name, out)}
    write_run_record(out, "rcnn export-backbone", {"run": str(run_dir), **info})
    logger.info("exported the %s %s of %s", name, trained, run_dir)
    return info
