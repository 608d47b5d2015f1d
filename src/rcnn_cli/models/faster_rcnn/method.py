"""What the registry knows of Faster R-CNN: its :class:`rcnn_cli.method.Method` (detector, export,
``rcnn compare`` column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from rcnn_cli.method import CompareEntry, Export, Method, measured, resize_text, schedule_text
from rcnn_cli.models.faster_rcnn.config import FasterRCNNConfig, MODEL_KIND, NAME
from rcnn_cli.models.faster_rcnn.model import load_model
from rcnn_cli.models.faster_rcnn.detector import FasterRCNNDetector, rpn_attrs, rpn_proposer
from rcnn_cli.models.faster_rcnn.train import train_faster


class _WholeDetector(nn.Module):
    """The whole detector on one image: ``(3, H, W)`` in ``[0, 1]`` -> boxes ``(n, 4)`` pixels, scores, labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _whole(run) -> tuple[nn.Module, tuple, dict[str, Any], FasterRCNNConfig, dict[str, Any]]:
    """The export of the whole detector (:class:`rcnn_cli.method.Export`); no score threshold inside the graph."""
    model, cfg = load_model(run.root, "cpu")
    heads = model.roi_heads
    detect = {"score_threshold": float(heads.score_thresh), "nms": float(heads.nms_thresh),
              "top_k": int(heads.detections_per_img),
              "mean": list(model.transform.image_mean), "std": list(model.transform.image_std)}
    heads.score_thresh = 0.0
    example = (torch.rand(3, int(cfg.min_size), int(cfg.min_size) * 4 // 3),)
    return _WholeDetector(model.eval()).eval(), example, detect, cfg, {}


def _trained_layers(run) -> tuple[nn.Module, nn.Module]:
    model, _ = load_model(run.root)
    return model.backbone.body, model.roi_heads.box_head


def _trunk_network(run):
    from rcnn_cli.backends import trunk_export

    return trunk_export(load_model(run.root)[0].backbone.body, run.model["backbone"], f"{NAME} R-CNN")


def _compare_step(c) -> None:
    """``rcnn compare``: training, detection and the RPN's proposal recall (``c``: the compare context)."""
    G, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = c.stage_config({"G": G})

    def train(resume: bool) -> dict:
        model = FasterRCNNConfig(
            **{k: G[k] for k in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                                 "rpn_post_nms_top_n_test", "anchor_sizes", "aspect_ratios") if G[k] is not None},
            backbone=c.backbone, weights=c.settings["model"]["weights"],
            head="backbone" if c.backbone in ("vgg16", "alexnet") else "mlp", auto_anchors=bool(G["auto_anchors"]),
            min_size=int(G["min_size"]), max_size=int(G["max_size"]), box_score_thresh=float(D["score_threshold"]),
            box_nms_thresh=float(D["nms"]), box_detections_per_img=int(D["top_k"]))
        return train_faster(d.path, d.train_split, run_dir, model, c.train_config(G), fit=False,  # exactly these
                            images=d.images, resume=resume, command=f"{c.command} ({NAME})")

    result = c.train_and_evaluate(NAME, config, run_dir, train,
                                  lambda: FasterRCNNDetector.from_run(run_dir, device=c.device))
    result["recall"] = _rpn_recall(c, run_dir, int(G["rpn_post_nms_top_n_test"]))
    result["status"] = c.status((f"{NAME}-train", f"{NAME}-eval", f"{NAME}-recall"))
    c.results[NAME] = result


def _rpn_recall(c, run_dir: Path, top_n: int) -> dict:
    """The RPN's proposals of the test split as a proposals file, and their recall."""
    d = c.data
    rpn_file = run_dir / f"proposals_{d.test_split}_rpn.h5"

    def fn() -> dict:
        from rcnn_cli.data.inputs import ImageInput
        from rcnn_cli.evaluation.recall import recall_stats
        from rcnn_cli.proposals import ProposalConfig, run_propose

        proposer = rpn_proposer(run_dir, device=c.device, post_nms_top_n=top_n)
        run_propose([ImageInput(r.image_id, r.path) for r in d.test_ds.records], rpn_file, ProposalConfig(min_size=0),
                    proposer=proposer, attrs=rpn_attrs(run_dir, top_n), progress=c.progress,
                    command=f"{c.command} (RPN proposals)")
        return c.recall_summary(recall_stats(d.test_ds, rpn_file))

    return c.st.run(f"{NAME}-recall", {"train": c.st.hashes[f"{NAME}-train"], "split": d.test_split, "top_n": top_n},
                    [rpn_file], fn, clean=[rpn_file, rpn_file.with_name(rpn_file.name + ".config.json")])


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    F = s[NAME]
    return (f"- Faster R-CNN: {resize_text(F, short=False)}; {schedule_text(F)}; anchors "
            f"{'fitted to the training boxes' if F['auto_anchors'] else F['anchor_sizes']} x ratios "
            f"{F['aspect_ratios']}, RPN top-N {F['rpn_pre_nms_top_n_train']}/{F['rpn_post_nms_top_n_train']} "
            f"train, {F['rpn_pre_nms_top_n_test']}/{F['rpn_post_nms_top_n_test']} test")


def _claim(report: Mapping[str, Any]) -> str | None:
    """The lecture: YOLO is faster than Faster R-CNN but not as good."""
    times = measured(report, ("yolo", NAME), "test_seconds_per_image", "with_proposals")
    maps = measured(report, ("yolo", NAME), "mAP", "voc12")
    if times is None or maps is None or not times[1]:
        return None
    (ty, tf), (my, mf) = times, maps
    return (f"- lecture: YOLO is faster than Faster R-CNN but not as good (paper, VOC 2007: 63.4 vs 73.2 "
            f"mAP). Here: YOLO {ty / tf:.2f}x Faster R-CNN's test time, mAP {100 * my:.1f} vs {100 * mf:.1f}"
            f" (VOC12) -> {'holds' if ty < tf and my < mf else 'does not hold as stated'}.")


_RPN_TOP_N = {"rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 6000,
              "rpn_post_nms_top_n_test": 300}

#: ``rcnn compare``'s settings per budget (``full``: the paper's, 80k iterations x 1 image on VOC 2007
#: trainval, about 16 epochs with the step at 12).
COMPARE_SETTINGS = {
    "quick": {"min_size": 256, "max_size": 512, "epochs": 5, "lr": 0.01, "lr_steps": [4], "warmup_iters": 50,
              "batch_size": 2, "auto_anchors": True, "anchor_sizes": None, "aspect_ratios": [0.5, 1.0, 2.0],
              **_RPN_TOP_N, "max_iters": None},
    "full": {"min_size": 600, "max_size": 1000, "epochs": 16, "lr": 0.01, "lr_steps": [12], "warmup_iters": 100,
             "batch_size": 2, "auto_anchors": False, "anchor_sizes": [128.0, 256.0, 512.0],
             "aspect_ratios": [0.5, 1.0, 2.0], **_RPN_TOP_N, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="Faster R-CNN", detector=FasterRCNNDetector, config=FasterRCNNConfig, legacy=(MODEL_KIND,),
    backbone=_trained_layers, export=Export(network=_trunk_network, whole=_whole, whole_by_default=True),
    compare=CompareEntry(settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe, claim=_claim,
                         input_text=lambda s, result: resize_text(s[NAME]),
                         proposals=lambda s: f"RPN top {s[NAME]['rpn_post_nms_top_n_test']}"))
