"""The Fast R-CNN network: RoI pooling over one trunk pass, the two-layer head, RoI sampling; building and
loading it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool

from rcnn_cli.boxes import decode, encode, resize_boxes
from rcnn_cli.errors import UserError
from rcnn_cli.models.fast_rcnn.config import BOX_WEIGHTS, FastRCNNConfig, NAME


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
