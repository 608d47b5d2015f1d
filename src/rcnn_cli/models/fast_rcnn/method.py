"""What the registry knows of Fast R-CNN: its :class:`rcnn_cli.method.Method` (detector, export, ``rcnn compare``
column)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from rcnn_cli.method import CompareEntry, Export, Method, resize_text, schedule_text
from rcnn_cli.models.fast_rcnn.config import FastRCNNConfig, NAME
from rcnn_cli.models.fast_rcnn.model import FastRCNN, load_fast_rcnn
from rcnn_cli.models.fast_rcnn.detector import FastRCNNDetector
from rcnn_cli.models.fast_rcnn.train import train_fast_rcnn


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
    return (f"- Fast R-CNN: {resize_text(S, short=False)}; {schedule_text(S)}; {S['rois_per_image']} RoIs/image, "
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
