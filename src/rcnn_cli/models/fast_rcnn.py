"""Fast R-CNN (Girshick, ICCV 2015): one convolutional pass per image, RoI pooling of each proposal,
a classifier over N+1 classes and class-specific box regressors trained jointly.

Pieces reused from torchvision: ``GeneralizedRCNNTransform`` (normalise, resize so the shorter side
is ``min_size`` and the longer at most ``max_size``, batch), ``BalancedPositiveNegativeSampler``,
``fastrcnn_loss`` (cross-entropy + smooth L1 on foreground RoIs), ``roi_pool``/``roi_align`` and
``batched_nms``. Box targets use the package's one box coder (:func:`rcnn_cli.boxes.encode`) with
weights ``(10, 10, 5, 5)``, i.e. targets normalised by stds ``(0.1, 0.1, 0.2, 0.2)``.

torchvision's ``FasterRCNN``/``RoIHeads`` only accept ``MultiScaleRoIAlign``, so the classic RoI max
pooling of the paper is wired here by hand.

Interface (torchvision's detection convention)::

    train: model(images, targets) -> {"loss_classifier", "loss_box_reg"}
           images: list[(3, H, W) float in [0, 1]]; targets: list[{"boxes" (M, 4), "labels" (M,) 1..K,
           "proposals" (P, 4)}] (proposals may instead be passed as ``proposals=``), original pixels
    eval:  model(images, proposals=list[(P, 4)]) -> list[{"boxes" (D, 4) original pixels,
           "scores" (D,), "labels" (D,) int64 1..K}]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool

from rcnn_cli.boxes import decode, encode, resize_boxes
from rcnn_cli.detector import REGRESSED_NMS, DetectConfig, DetectSettings, Detector, settings_in_effect
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.method import CompareEntry, Export, Method, resize_text

__all__ = ["TRAIN_DEFAULTS", "FastRCNNConfig", "FastRCNN", "build_fast_rcnn", "sample_rois", "BOX_WEIGHTS", "FastRCNNDetector",
           "train_fast_rcnn", "load_fast_rcnn"]

#: The method's one name: its runs' kind, command group and folder in ``rcnn compare``.
NAME = "fast"

#: Training settings of ``rcnn fast train`` that differ from :class:`rcnn_cli.engine.TrainConfig`'s.
TRAIN_DEFAULTS = {"epochs": 10}

#: Box-coder weights of Fast/Faster R-CNN (targets divided by stds 0.1, 0.1, 0.2, 0.2).
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@dataclass
class FastRCNNConfig:
    """Everything needed to rebuild the network (stored in the run's ``config.json``)."""

    backbone: str = "efficientnet_lite0"
    classes: list[str] = field(default_factory=list)
    weights: str = "imagenet"  # the backbone's starting weights (imagenet | none | a file)
    weights_id: str = ""
    head: str = "auto"              # "mlp": 7x7 RoI pool + two new FC layers; "backbone": the backbone's own head
    roi_size: int = 7
    roi_align: bool = False
    representation_size: int = 1024  # width of the two FC layers of head "mlp"
    frozen_layers: int | None = None  # leading trunk modules not trained (None: the backbone registry's)
    min_size: int = 600
    max_size: int = 1000
    # training
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    max_proposals: int = 2000
    # inference
    score_thresh: float = DetectConfig.score_threshold
    nms_thresh: float = REGRESSED_NMS
    detections_per_img: int = DetectConfig.top_k
    # how proposals were made for training (detect without a file makes them the same way)
    proposals: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)  # e.g. the settings chosen from the data

    def __post_init__(self) -> None:
        if not 0 < self.fg_fraction <= 1:
            raise UserError(f"--fg-fraction must be in (0, 1], got {self.fg_fraction}")
        if self.rois_per_image < 1:
            raise UserError(f"--rois-per-image must be at least 1, got {self.rois_per_image}")
        if self.min_size < 32 or self.max_size < self.min_size:
            raise UserError(f"--min-size {self.min_size} / --max-size {self.max_size}: need 32 <= min-size <= max-size")
        if self.head not in ("auto", "mlp", "fc", "backbone"):
            raise UserError(f"--head {self.head}: choose mlp or backbone (or auto)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolved_head(self) -> str:
        if self.head == "fc":  # the name runs of rcnn 0.1 recorded for the MLP head
            return "mlp"
        if self.head != "auto":
            return self.head
        return "backbone" if self.backbone in ("vgg16", "alexnet") else "mlp"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = "fast_rcnn"
        d["head"] = self.resolved_head()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FastRCNNConfig":
        if d.get("arch", "fast_rcnn") != "fast_rcnn":
            raise UserError(f"the model is a {d.get('arch')} model, not Fast R-CNN")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TwoMLPHead(nn.Module):
    """Flatten + fc6 + ReLU + fc7 + ReLU: ``(R, C, P, P)`` -> ``(R, representation_size)``."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_dim = representation_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc6(x.flatten(1)))
        return F.relu(self.fc7(x))


def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                sampler: BalancedPositiveNegativeSampler, fg_iou: float = 0.5, bg_iou_low: float = 0.1,
                weights=BOX_WEIGHTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast R-CNN minibatch sampling for one image.

    ``proposals (P, 4)`` already include the ground truth. A RoI is foreground when its best IoU with
    a gt box is ``>= fg_iou`` (label of that gt), background when it lies in ``[bg_iou_low, fg_iou)``;
    when that leaves fewer backgrounds than the minibatch needs, ``[0, fg_iou)`` is used instead
    (images without objects: every proposal is background). Returns ``rois (R, 4)``, ``labels (R,)``
    (0 = background) and regression targets ``(R, 4)`` (zeros for backgrounds).
    """
    device = proposals.device
    if gt_boxes.numel() == 0:
        max_iou = torch.zeros(len(proposals), device=device)
        matched = torch.zeros(len(proposals), dtype=torch.long, device=device)
    else:
        iou = box_iou(gt_boxes, proposals)  # (M, P)
        max_iou, matched = iou.max(dim=0)
    fg = max_iou >= fg_iou
    bg = (max_iou < fg_iou) & (max_iou >= bg_iou_low)
    n_fg_wanted = min(int(fg.sum()), int(sampler.batch_size_per_image * sampler.positive_fraction))
    if int(bg.sum()) < sampler.batch_size_per_image - n_fg_wanted:
        bg = max_iou < fg_iou
    labels = torch.full((len(proposals),), -1, dtype=torch.long, device=device)
    labels[bg] = 0
    if gt_boxes.numel():
        labels[fg] = gt_labels[matched[fg]]
    pos_mask, neg_mask = sampler([labels])
    keep = torch.where(pos_mask[0] | neg_mask[0])[0]
    rois, labels = proposals[keep], labels[keep]
    targets = torch.zeros_like(rois)
    if gt_boxes.numel():
        is_fg = labels > 0
        if is_fg.any():
            targets[is_fg] = encode(gt_boxes[matched[keep][is_fg]], rois[is_fg], weights)
    return rois, labels, targets


class FastRCNN(nn.Module):
    """Fast R-CNN on any convolutional trunk (see the module docstring for the interface).

    ``trunk``: ``(B, 3, H, W)`` normalised -> ``(B, C, H/stride, W/stride)``; ``head``: pooled RoIs
    ``(R, C, roi_size, roi_size)`` -> ``(R, D)`` (``head.out_dim`` = D), or None for two new FC layers.
    """

    def __init__(self, trunk: nn.Module, trunk_channels: int, stride: int, config: FastRCNNConfig,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), head: nn.Module | None = None) -> None:
        super().__init__()
        if config.num_classes < 1:
            raise UserError("Fast R-CNN needs at least one class")
        self.config = config
        self.stride = stride
        self.transform = GeneralizedRCNNTransform(config.min_size, config.max_size, list(mean), list(std))
        self.trunk = trunk
        if head is None:
            head = TwoMLPHead(trunk_channels * config.roi_size ** 2, config.representation_size)
        self.head = head
        dim = head.out_dim
        k1 = config.num_classes + 1
        self.cls_score = nn.Linear(dim, k1)
        self.bbox_pred = nn.Linear(dim, 4 * k1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.sampler = BalancedPositiveNegativeSampler(config.rois_per_image, config.fg_fraction)

    # ------------------------------------------------------------------------------------------
    def _pool(self, features: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        size = self.config.roi_size
        rois = [r.to(features.dtype) for r in rois]
        if self.config.roi_align:
            return roi_align(features, rois, output_size=size, spatial_scale=1.0 / self.stride, sampling_ratio=2,
                             aligned=True)
        return roi_pool(features, rois, output_size=size, spatial_scale=1.0 / self.stride)

    def _prepare_proposals(self, props: torch.Tensor, original: tuple[int, int], resized: tuple[int, int]) -> torch.Tensor:
        props = props.reshape(-1, 4).float()[: self.config.max_proposals]
        props = clip_boxes_to_image(resize_boxes(props, original[::-1], resized[::-1]), resized)
        keep = remove_small_boxes(props, 1e-2)
        return props[keep]

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None,
                proposals: list[torch.Tensor] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        if proposals is None:
            if targets is None or any("proposals" not in t for t in targets):
                raise ValueError("Fast R-CNN needs proposals: pass proposals= or targets[i]['proposals']")
            proposals = [t["proposals"] for t in targets]
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        tv_targets = None
        if targets is not None and self.training:
            tv_targets = [{"boxes": t["boxes"].reshape(-1, 4).float(), "labels": t["labels"].reshape(-1)} for t in targets]
        image_list, tv_targets = self.transform(images, tv_targets)
        features = self.trunk(image_list.tensors)
        rois = [self._prepare_proposals(p, o, r) for p, o, r in zip(proposals, original_sizes, image_list.image_sizes)]

        if self.training:
            assert tv_targets is not None
            sampled, labels, reg_targets = [], [], []
            for props, t in zip(rois, tv_targets):
                gt = t["boxes"]
                props = torch.cat([props, gt.to(props.dtype)]) if gt.numel() else props
                if len(props) == 0:  # no proposals and no objects: one whole-image background RoI
                    h, w = features.shape[-2] * self.stride, features.shape[-1] * self.stride
                    props = torch.tensor([[0.0, 0.0, float(w - 1), float(h - 1)]], device=features.device)
                r, lab, reg = sample_rois(props, gt, t["labels"], self.sampler, self.config.fg_iou,
                                          self.config.bg_iou_low)
                sampled.append(r)
                labels.append(lab)
                reg_targets.append(reg)
            x = self.head(self._pool(features, sampled))
            class_logits, box_regression = self.cls_score(x), self.bbox_pred(x)
            loss_cls, loss_box = fastrcnn_loss(class_logits.float(), box_regression.float(), labels, reg_targets)
            return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

        return self._detect(features, rois, image_list.image_sizes, original_sizes)

    @torch.no_grad()
    def _detect(self, features, rois, image_sizes, original_sizes) -> list[dict[str, torch.Tensor]]:
        counts = [len(r) for r in rois]
        if sum(counts) == 0:
            empty = features.new_zeros((0, 4))
            return [{"boxes": empty, "scores": empty[:, 0], "labels": empty[:, 0].long()} for _ in rois]
        x = self.head(self._pool(features, rois))
        scores_all = F.softmax(self.cls_score(x).float(), dim=-1)
        deltas_all = self.bbox_pred(x).float()
        if len(rois) == 1:  # no split: an exported graph takes any number of proposals
            scores_all, deltas_all = [scores_all], [deltas_all]
        else:
            scores_all, deltas_all = scores_all.split(counts), deltas_all.split(counts)
        results = []
        k1 = self.config.num_classes + 1
        for props, scores, deltas, size, orig in zip(rois, scores_all, deltas_all, image_sizes, original_sizes):
            if len(props) == 0:
                empty = features.new_zeros((0, 4))
                results.append({"boxes": empty, "scores": empty[:, 0], "labels": empty[:, 0].long()})
                continue
            boxes = decode(deltas, props.float(), BOX_WEIGHTS).reshape(-1, k1, 4)
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(k1, device=boxes.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.config.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.config.nms_thresh)[: self.config.detections_per_img]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            boxes = resize_boxes(boxes, size[::-1], orig[::-1])  # (h, w) sizes -> original pixels
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results


def build_fast_rcnn(config: FastRCNNConfig, weights: str = "imagenet") -> FastRCNN:
    """Fast R-CNN on a backbone of :mod:`rcnn_cli.backbones` (``weights``: imagenet | none | PATH).

    Batch norms are frozen (statistics and affine), as in torchvision's detection models: minibatches of
    two images cannot estimate them. The first ``config.frozen_layers`` trunk modules are not trained
    (the backbone registry's ``frozen_modules`` when None).
    """
    from rcnn_cli import backbones

    spec = backbones.get_spec(config.backbone)
    trunk, channels, stride = backbones.build_trunk(config.backbone, weights, freeze_bn=True)
    head = None
    if config.resolved_head() == "backbone":
        head, _ = backbones.build_head(config.backbone, weights, freeze_bn=True)
        fixed = getattr(head, "roi_size", None)
        if fixed and config.backbone in ("vgg16", "alexnet"):
            config.roi_size = int(fixed)  # flatten + fc6 need the exact pool5 size
        elif fixed and config.roi_size == 7:
            config.roi_size = int(fixed)
    elif config.resolved_head() != "mlp":
        raise UserError(f"--head {config.head}: choose mlp or backbone")
    config.head = config.resolved_head()
    if not config.weights_id:
        config.weights_id = backbones.weights_id(config.backbone, weights)
    frozen = spec.frozen_modules if config.frozen_layers is None else config.frozen_layers
    config.frozen_layers = frozen
    backbones.freeze_leading(trunk, frozen)
    return FastRCNN(trunk, channels, stride, config, spec.mean, spec.std, head=head)


# ----------------------------------------------------------------------------------------------
# run directories: training and detection
# ----------------------------------------------------------------------------------------------

def _proposal_settings(attrs: dict[str, Any]) -> dict[str, Any]:
    """The selective-search settings of a proposals file, as recorded in a run (for detect)."""
    keep = ("method", "mode", "max_size", "min_size", "limit")
    out = {}
    for k in keep:
        if k in attrs:
            v = attrs[k]
            out[k] = v.item() if hasattr(v, "item") else (v.decode() if isinstance(v, bytes) else v)
    return out


def _fitted(dataset, model_config: FastRCNNConfig, train_config, sources, fit: Sequence[str]):
    """``model_config`` and ``train_config`` with the settings named in ``fit`` chosen from the data."""
    from dataclasses import replace

    from rcnn_cli.fitting import data_stats, fit_fast
    from rcnn_cli.device import resolve_device

    stats = data_stats(dataset)  # a split without one valid box: a one-line error before any training
    current = {"min_size": model_config.min_size, "max_size": model_config.max_size, "epochs": train_config.epochs}
    f = fit_fast(stats, {k: None if k in fit else v for k, v in current.items()},
                 resolve_device(train_config.device).type, train_config.batch_size)
    if "epochs" in f.values:
        train_config = replace(train_config, epochs=int(f.values["epochs"]), lr_steps=None)
    model_config = replace(model_config, **{k: int(v) for k, v in f.values.items() if k != "epochs"})
    model_config.trained_on = dict(model_config.trained_on, fitted=f.record())
    f.print("settings chosen from the training data (flags override)")
    return model_config, train_config, dict(sources or {}, **{k: f"chosen: {r}" for k, r in f.reasons.items()})


def train_fast_rcnn(dataset, out_dir, train_config, model_config: FastRCNNConfig, proposals,
                    weights: str = "imagenet", resume: bool = False, val_dataset=None,
                    val_proposals=None, val_metric: str = "voc12", command: str = "rcnn fast train",
                    sources: dict[str, str] | None = None, fit: Sequence[str] = ()) -> dict[str, Any]:
    """Train Fast R-CNN on ``dataset`` (a :class:`rcnn_cli.data.Dataset`) with region ``proposals``
    (path of a proposals file) into ``out_dir`` through the one trainer (:func:`rcnn_cli.engine.train`).

    ``model_config.classes`` defaults to the dataset's classes. With ``val_dataset``, the mAP
    (``val_metric``) on it is computed after every epoch from ``val_proposals`` (default: the same
    file). ``sources`` (setting -> where its value came from) goes into the run record. ``fit`` names
    the settings to choose from the training split instead (``min_size``, ``max_size``, ``epochs``:
    :func:`rcnn_cli.fitting.fit_fast`; printed with their reasons, recorded as chosen). Returns the
    trainer's summary (+ ``"val"``: the last validation result).
    """
    from pathlib import Path

    from rcnn_cli import engine
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.proposals import load as load_proposals
    from rcnn_cli.device import seed_everything

    out_dir = Path(out_dir)
    if not dataset.classes:
        raise UserError("the dataset has no classes")
    if train_config.patience is not None and val_dataset is None:
        raise UserError("--patience needs --val-split (early stopping watches the validation mAP)")
    if not model_config.classes:
        model_config.classes = list(dataset.classes)
    if not (resume and engine.find_checkpoint(out_dir) is not None):
        model_config, train_config, sources = _fitted(dataset, model_config, train_config, sources, fit)
    with load_proposals(proposals) as reader:
        model_config.proposals = dict(_proposal_settings(dict(reader.attrs)), file=str(proposals))
    train_set = DetectionDataset(dataset, flip=True, proposals=proposals, seed=train_config.seed,
                                 max_proposals=model_config.max_proposals)
    seed_everything(train_config.seed)
    resuming = resume and engine.find_checkpoint(out_dir) is not None
    model_config.weights = str(weights)
    model = build_fast_rcnn(model_config, "none" if resuming else weights)
    if resuming:
        from rcnn_cli.io.runs import read_run

        model.config.weights_id = read_run(out_dir).model.get("weights_id", model.config.weights_id)
    last_val: dict[str, Any] = {}
    evaluate_fn = None
    if val_dataset is not None:
        def evaluate_fn(net: nn.Module, epoch: int) -> dict:
            result = evaluate_model(net, val_dataset, val_proposals or proposals, metric=val_metric)
            last_val.clear()
            last_val.update(result)
            return {"mAP": float(result["mAP"]), **{f"AP_{c}": float(v) for c, v in result["AP"].items() if v is not None}}

    summary = engine.train(model, train_set, out_dir, train_config, resume=resume, model_config=model.config.to_dict(),
                           evaluate_fn=evaluate_fn, command=command, kind=NAME, sources=sources)
    if last_val:
        summary["val"] = {k: v for k, v in last_val.items() if k != "curves"}
    return summary


def load_fast_rcnn(run_dir, device: str | torch.device = "cpu", weights: str = "final") -> FastRCNN:
    """The trained model of a run directory (``config.json`` + ``model.safetensors``; ``weights``
    ``best``: the best validation epoch's), in eval mode."""
    from pathlib import Path

    from rcnn_cli.engine import CHECKPOINT_DIR
    from rcnn_cli.io.runs import read_run, weights_file
    from rcnn_cli.io.tensors import load_state
    from rcnn_cli.device import resolve_device

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if run.kind != NAME:
        raise UserError(f"{run_dir}/config.json: a '{run.kind}' run, not a Fast R-CNN one (use `rcnn detect`)")
    config = FastRCNNConfig.from_dict(run.model)
    path = weights_file(run_dir, weights)
    if weights == "final" and not path.is_file() and (run_dir / CHECKPOINT_DIR / "model.safetensors").is_file():
        path = run_dir / CHECKPOINT_DIR / "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        model = build_fast_rcnn(config, "none")
    load_state(model, path)
    return model.to(resolve_device(device)).eval()


class FastRCNNDetector(Detector):
    """A trained Fast R-CNN: ``detect(image, image_id) -> ImageDetections``.

    Proposals come from ``proposals`` (a proposals file or reader) when it has the image, else from
    selective search run on the fly with the settings the model was trained with. ``timings``:
    "proposals", "network" (resize + trunk + RoI head + NMS on the device), "post" (class names).
    """

    kind = NAME
    weights = "final"  # which weights of the run (set by from_run)
    runtime = "torch"

    def __init__(self, model: FastRCNN, config: DetectSettings = None, proposals=None,
                 max_proposals: int | None = None) -> None:
        from rcnn_cli.memory import reuse_memory

        reuse_memory()
        self.model = model.to(memory_format=torch.channels_last)  # 4-d weights; the trainer's layout too
        self.device = next(model.parameters()).device
        cfg = model.config
        self.config = settings_in_effect(config, DetectConfig(cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img))
        self.max_proposals = int(max_proposals or cfg.max_proposals)
        self.configure(self.config)
        cfg.max_proposals = self.max_proposals
        self.classes = list(cfg.classes)
        self.reader, self._own_reader = _open_proposals(proposals)
        self._warned = False

    def configure(self, config: DetectConfig) -> None:
        self.config, cfg = config, self.model.config
        cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img = config.score_threshold, config.nms, config.top_k

    @classmethod
    def from_run(cls, run_dir, device: str = "auto", config: DetectSettings = None, proposals=None,
                 max_proposals: int | None = None, weights: str = "final",
                 runtime: str = "torch") -> "FastRCNNDetector":
        """``proposals``: a proposals file (else selective search on the fly); ``max_proposals``:
        top-ranked proposals used per image (default: as trained); ``weights``: final | best;
        ``runtime``: the trunk's (torch, onnxruntime, openvino, auto; the RoI head stays in torch)."""
        from pathlib import Path

        from rcnn_cli.io.files import file_sha256
        from rcnn_cli.io.runs import weights_file
        from rcnn_cli.device import resolve_device
        from rcnn_cli.backends import RuntimeTrunk, resolve_runtime

        model = load_fast_rcnn(run_dir, resolve_device(device), weights)
        runtime = resolve_runtime(runtime, next(model.parameters()).device.type)
        if runtime != "torch":
            key = {"run": "fast-trunk", "weights": file_sha256(weights_file(run_dir, weights))}
            model.trunk = RuntimeTrunk(model.trunk, runtime, Path(run_dir) / "graphs", key)
        detector = cls(model, config, proposals, max_proposals)
        detector.weights, detector.runtime = weights, runtime
        return detector

    def close(self) -> None:
        if self._own_reader:
            self.reader.close()

    def settings(self) -> dict:
        return dict(super().settings(), max_proposals=self.max_proposals, weights=self.weights,
                    runtime=self.runtime,
                    proposals=str(getattr(self.reader, "path", "")) or "selective search on the fly")

    def propose(self, image, image_id: str) -> np.ndarray:
        """Proposals ``(N, 4)``: from the store when it has the image (rescaled to this image's size),
        else selective search with the training run's settings."""
        from rcnn_cli.proposals import boxes_for, selective_search

        if self.reader is not None:
            if image_id in self.reader:
                return boxes_for(self.reader, image_id, image.size)
            logger.warning("%s: not in the proposals file; running selective search", image_id)
        settings = self.model.config.proposals or {}
        method = settings.get("method", "selective-search")
        if method not in ("selective-search", "selective_search", "ss") and not self._warned:
            logger.warning("the model was trained on '%s' proposals; without --proposals, selective search is used", method)
            self._warned = True
        kwargs = {k: settings[k] for k in ("mode", "max_size", "min_size") if settings.get(k) is not None}
        return np.asarray(selective_search(image, **kwargs), np.float32).reshape(-1, 4)

    @torch.no_grad()
    def detect(self, image, image_id: str):
        from rcnn_cli.data.images import to_tensor
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.device import synchronize

        t0 = time.perf_counter()
        boxes = self.propose(image, image_id)[: self.max_proposals]
        t1 = time.perf_counter()
        out = self.model([to_tensor(image).to(self.device)], proposals=[torch.from_numpy(boxes).to(self.device)])[0]
        synchronize(self.device)
        t2 = time.perf_counter()
        labels = [self.classes[int(i) - 1] for i in out["labels"].tolist()]
        det = ImageDetections(image_id, out["boxes"].float().cpu().numpy(), out["scores"].float().cpu().numpy(),
                              labels, num_proposals=int(len(boxes)))
        det.timings = {"proposals": t1 - t0, "network": t2 - t1, "post": time.perf_counter() - t2}
        return det


def _open_proposals(proposals) -> tuple[Any, bool]:
    """``(reader or None, whether it was opened here)`` from a path, a reader or None."""
    import os

    from rcnn_cli.proposals import load as load_proposals

    if isinstance(proposals, (str, os.PathLike)):
        return load_proposals(proposals), True
    return proposals, False


def evaluate_model(model: FastRCNN, dataset, proposals, metric: str = "voc12") -> dict[str, Any]:
    """mAP of ``model`` on a labelled ``dataset`` with proposals from a file (path or reader), through
    the one inference loop. Returns :func:`rcnn_cli.evaluation.evaluate`'s dict."""
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset

    was_training = model.training
    model.eval()
    detector = FastRCNNDetector(model, proposals=proposals)
    try:
        detections = detect_dataset(detector, dataset, detector.classes)
    finally:
        detector.close()
        model.train(was_training)
    return evaluate(dataset, detections, metric=metric)


# ----------------------------------------------------------------------------------------------
# what the registry knows of Fast R-CNN
# ----------------------------------------------------------------------------------------------

class _WholeDetector(nn.Module):
    """The whole detector on one image: ``(3, H, W)`` in ``[0, 1]`` and ``(P, 4)`` proposals in its
    pixels -> boxes ``(n, 4)`` pixels, scores, labels."""

    def __init__(self, model: FastRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, proposals: torch.Tensor):
        out = self.model([image], proposals=[proposals])[0]
        return out["boxes"], out["scores"], out["labels"]


def _whole(run) -> tuple[nn.Module, tuple, dict[str, Any], FastRCNNConfig, dict[str, Any]]:
    """The export of the whole detector (:class:`rcnn_cli.method.Export`); no score threshold inside the graph."""
    model = load_fast_rcnn(run.root)
    cfg = model.config
    detect = {"score_threshold": float(cfg.score_thresh), "nms": float(cfg.nms_thresh),
              "top_k": int(cfg.detections_per_img),
              "mean": list(model.transform.image_mean), "std": list(model.transform.image_std)}
    cfg.score_thresh = 0.0
    side = int(cfg.min_size)
    corner = torch.rand(64, 2) * side / 2
    example = (torch.rand(3, side, side * 4 // 3), torch.cat([corner, corner + side / 4], 1))
    extra = {"proposals": dict(cfg.proposals or {}), "max_proposals": int(cfg.max_proposals),
             "inputs": [{"name": "proposals", "shape": ["p", 4], "dtype": "float32",
                         "meaning": "region proposals, x1, y1, x2, y2 in the image's pixels (rcnn propose)"}]}
    return _WholeDetector(model.eval()).eval(), example, detect, cfg, extra


def _trained_layers(run) -> tuple[nn.Module, nn.Module]:
    model = load_fast_rcnn(run.root)
    return model.trunk, model.head


def _trunk_network(run):
    from rcnn_cli.backends import trunk_export

    return trunk_export(load_fast_rcnn(run.root).trunk, run.model["backbone"], f"{NAME} R-CNN")


def _compare_step(c) -> None:
    """``rcnn compare``: Fast R-CNN on the shared selective-search files (``c``: the compare context)."""
    c.shared_proposals()
    S, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir, limit = c.out / NAME, c.settings["proposals"]["limit"]
    config = {"S": S, "backbone": c.backbone, "weights": c.settings["model"]["weights"], "seed": c.seed,
              "device": c.device, "proposals": c.proposals_hash("propose-train"),
              "max_proposals": limit or 2000, **d.data_id}

    def train(resume: bool) -> dict:
        mc = FastRCNNConfig(backbone=c.backbone, classes=list(d.train_ds.classes), roi_align=bool(S["roi_align"]),
                            representation_size=int(S["representation_size"]), min_size=int(S["min_size"]),
                            max_size=int(S["max_size"]), rois_per_image=int(S["rois_per_image"]),
                            fg_fraction=float(S["fg_fraction"]), max_proposals=int(limit or 2000),
                            score_thresh=float(D["score_threshold"]), nms_thresh=float(D["nms"]),
                            detections_per_img=int(D["top_k"]))
        return train_fast_rcnn(d.train_ds, run_dir, c.train_config(S), mc, c.proposals_file(d.train_split),
                               weights=c.settings["model"]["weights"], resume=resume, command=f"{c.command} ({NAME})")

    c.results[NAME] = c.train_and_evaluate(
        NAME, config, run_dir, train,
        lambda: FastRCNNDetector.from_run(run_dir, device=c.device, proposals=c.proposals_file(d.test_split)),
        eval_extra={"proposals": c.proposals_hash("propose-test")})


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    S = s[NAME]
    sched = f"{S['epochs']} epochs, lr {S['lr']} (x0.1 at epochs {S['lr_steps']}), batch {S['batch_size']}"
    if S.get("max_iters"):
        sched += f", at most {S['max_iters']} iterations"
    return (f"- Fast R-CNN: {resize_text(S, short=False)}; {sched}; {S['rois_per_image']} RoIs/image, "
            f"{'RoIAlign' if S['roi_align'] else 'RoI max pooling'} 7x7")


#: ``rcnn compare``'s settings per budget (``full``: the paper's, 40k iterations x 2 images on VOC 2007
#: trainval, about 16 epochs with the step at 12).
COMPARE_SETTINGS = {
    "quick": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
              "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
              "representation_size": 1024, "max_iters": None},
    "full": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12], "warmup_iters": 100,
             "batch_size": 2, "rois_per_image": 64, "fg_fraction": 0.25, "roi_align": False,
             "representation_size": 1024, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="Fast R-CNN", detector=FastRCNNDetector, config=FastRCNNConfig, legacy=("fast_rcnn",),
    backbone=_trained_layers,
    export=Export(network=_trunk_network, whole=_whole, whole_inputs=("image", "proposals")),
    compare=CompareEntry(settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe,
                         input_text=lambda s, result: resize_text(s[NAME])))
