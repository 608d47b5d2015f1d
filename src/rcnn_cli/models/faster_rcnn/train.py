"""Training Faster R-CNN on a labelled split: settings chosen from the data, the one trainer, validation."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.models.faster_rcnn.config import default_config, FasterRCNNConfig, FPN_ANCHOR_SIZES, NAME
from rcnn_cli.models.faster_rcnn.model import (
    _model_config_from, build_model, COCO_INITS, decode_size, init_state, load_init)
from rcnn_cli.models.faster_rcnn.detector import FasterRCNNDetector


def make_evaluate_fn(dataset, classes: Sequence[str], metrics: Sequence[str] = ("voc12",)) -> Callable[[nn.Module, int], dict]:
    """``evaluate_fn(model, epoch) -> {"mAP_voc12": ...}`` for the trainer's per-epoch validation,
    through the one inference loop."""
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset

    def evaluate_fn(model: nn.Module, epoch: int) -> dict:
        dets = detect_dataset(FasterRCNNDetector(model, model.rcnn_config), dataset, classes)
        out = {f"mAP_{m}": float(evaluate(dataset, dets, metric=m)["mAP"]) for m in metrics}
        return dict(out, mAP=out[f"mAP_{metrics[0]}"])  # the trainer keeps the best "mAP" in best/

    return evaluate_fn


def _fit(ds, given: dict, train_config, fixed_anchors: bool, fit: bool, fit_schedule: bool):
    """:func:`rcnn_cli.fitting.fit_faster` for the settings not ``given`` (``None``; anchors also
    ``fixed_anchors``: FPN's five levels or ``--no-auto-anchors``), or nothing without ``fit``; and the
    split's statistics."""
    from rcnn_cli.fitting import Fitted, data_stats, fit_faster
    from rcnn_cli.device import resolve_device

    stats = data_stats(ds)  # a split without one valid box: a one-line error before any training
    if not fit:
        return stats, Fitted()
    given = dict(given, epochs=None if fit_schedule else train_config.epochs)
    if fixed_anchors:
        given["anchor_sizes"] = given.get("anchor_sizes") or "fixed"
    return stats, fit_faster(stats, given, resolve_device(train_config.device).type, train_config.batch_size)


#: The model settings :func:`rcnn_cli.fitting.fit_faster` may choose beside the image scale and anchors.
FITTED_MODEL_SETTINGS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_test", "box_detections_per_img")


def _new_config(ds, dataset_path, split, train_config, sources, *, backbone, weights, fpn, head, anchor_sizes,
                aspect_ratios, auto_anchors, min_size, max_size, train_sizes, model_overrides, fit, fit_schedule):
    """A new run's :class:`FasterRCNNConfig` (settings not given chosen from the data, see
    :func:`train_faster`), the training configuration (epochs fitted with ``fit_schedule``) and the
    settings' sources with the chosen ones marked."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.fitting import anchor_sizes_from

    given = dict(min_size=min_size, max_size=max_size, train_sizes=train_sizes or None,
                 anchor_sizes=anchor_sizes or None,
                 **{k: (model_overrides or {}).get(k) for k in FITTED_MODEL_SETTINGS})
    stats, fitted = _fit(ds, given, train_config, fpn or auto_anchors is False, fit, fit_schedule)
    chosen = {**{k: v for k, v in given.items() if v is not None}, **fitted.values}
    min_size, max_size = int(chosen.get("min_size", 600)), int(chosen.get("max_size", 1000))
    sizes = chosen.get("anchor_sizes") or (list(FPN_ANCHOR_SIZES) if fpn else None)
    if auto_anchors and "anchor_sizes" not in fitted.values:  # e.g. 5 FPN sizes fitted
        sizes = anchor_sizes_from(stats, len(sizes) if sizes else 3, min_size, max_size)
        logger.info("anchor sizes fitted to the training boxes: %s", ", ".join(f"{s:g}" for s in sizes))
    overrides = dict(model_overrides or {}, **{k: fitted.values[k] for k in FITTED_MODEL_SETTINGS if k in fitted.values})
    overrides.update(fpn=fpn, head=head, min_size=min_size, max_size=max_size,
                     train_min_sizes=[int(s) for s in chosen.get("train_sizes") or []] or None,
                     anchor_sizes=[float(s) for s in sizes] if sizes else None,
                     aspect_ratios=[float(r) for r in aspect_ratios] if aspect_ratios else None)
    cfg = default_config(ds.classes, backbone, **overrides)
    cfg.weights_id = weights_id(backbone, weights)
    cfg.weights = str(weights)
    cfg.auto_anchors = bool(auto_anchors) or "anchor_sizes" in fitted.values
    cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records),
                      "fitted": fitted.record()}
    if "epochs" in fitted.values:
        train_config = replace(train_config, epochs=int(fitted.values["epochs"]), lr_steps=None)
    sources = dict(sources or {}, **{k: f"chosen: {r}" for k, r in fitted.reasons.items()})
    fitted.print("settings chosen from the training data (flags override)")
    return cfg, train_config, sources


#: The settings :func:`_new_config` takes apart from the model configuration's other fields.
_OWN = ("backbone", "weights", "fpn", "head", "anchor_sizes", "aspect_ratios", "auto_anchors", "min_size", "max_size",
        "train_min_sizes")
#: Fields that are the run's record, not settings.
_RECORD = ("classes", "kind", "version", "weights_id", "trained_on")


def _settings(model: FasterRCNNConfig, given: Collection[str]) -> dict[str, Any]:
    """:func:`_new_config`'s keyword arguments from a configuration: the data-dependent settings not
    ``given`` are ``None`` (to be chosen), every other field as the configuration has it."""
    chosen_if_not_given = ("anchor_sizes", "auto_anchors", "min_size", "max_size", "train_min_sizes",
                           *FITTED_MODEL_SETTINGS)
    from rcnn_cli.backbones import get_spec

    value = {f.name: getattr(model, f.name) for f in fields(model)}
    spec = get_spec(model.backbone)
    for name, own in (("image_mean", spec.mean), ("image_std", spec.std)):
        if list(value[name]) == list(own):
            value[name] = None  # the backbone's own (another backbone, e.g. --init coco's, has its own)
    for name in chosen_if_not_given:
        if name not in given:
            value[name] = None
    own = {k: value[k] for k in _OWN}
    own["train_sizes"] = own.pop("train_min_sizes")
    own["model_overrides"] = {k: v for k, v in value.items() if k not in _OWN and k not in _RECORD}
    return own


def train_faster(dataset_path: str | Path, split: str | None, out: str | Path, model: FasterRCNNConfig | None,
                 train_config, *, given: Collection[str] = (), fit: bool = True, fit_schedule: bool = False,
                 images: str | Path | None = None, val_split: str | None = None, resume: bool = False,
                 init: str | None = None, command: str = "rcnn faster train",
                 sources: dict[str, str] | None = None) -> dict:
    """Train a Faster R-CNN (``model``: its :class:`FasterRCNNConfig`, the classes taken from the data;
    ``None``: the defaults) on a labelled dataset split with :func:`rcnn_cli.engine.train` and
    ``train_config`` (an :class:`rcnn_cli.engine.trainer.TrainConfig`).

    ``given`` names the fields the caller set; with ``fit`` (default) every data-dependent one not
    given (``min_size``, ``max_size``, ``train_min_sizes``, ``anchor_sizes``, ``auto_anchors``, the
    RPN's training pre-NMS and test post-NMS counts, detections per image) is chosen from the
    training split by :func:`rcnn_cli.fitting.fit_faster`, printed once with its reason and recorded;
    ``fit_schedule`` also chooses the epochs (and their steps); ``fit=False``: the configuration's
    values (the paper's by default). ``auto_anchors`` replaces the anchor sizes by
    :func:`fit_anchor_sizes` of the training boxes (as many sizes as given, 3 by default, 5 with
    ``fpn``); ``train_min_sizes`` turns on multi-scale training (each image's shorter side drawn from
    them and ``min_size``). ``init``: a starting point for every layer but the box predictor
    (:func:`init_state`: ``coco`` means torchvision's COCO ``fasterrcnn_resnet50_fpn`` and its
    architecture, ``--backbone resnet50 --fpn``; or a file). ``resume`` continues ``out``'s checkpoint
    with the model configuration recorded there. Writes ``out/model.safetensors`` and
    ``out/config.json`` (model + training settings); returns the engine's summary (+ ``"model_config"``).
    """
    model = model or FasterRCNNConfig()
    settings = _settings(model, given if fit else [f.name for f in fields(model)])
    backbone, weights, fpn = settings["backbone"], settings["weights"], settings["fpn"]
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine import find_checkpoint, train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    if train_config.patience is not None and not val_split:
        raise UserError("--patience needs --val-split (early stopping watches the validation mAP)")
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if init in COCO_INITS:
        backbone, fpn, weights = COCO_INITS[init][0], True, "none"  # every backbone tensor comes from COCO
    cfg = None
    if resume and (out / "config.json").is_file():
        try:
            cfg = _model_config_from(out)
            logger.info("resuming with the model configuration recorded in %s", out / "config.json")
        except UserError:
            cfg = None
    if cfg is None:
        cfg, train_config, sources = _new_config(
            ds, dataset_path, split, train_config, sources, **dict(settings, backbone=backbone, weights=weights, fpn=fpn),
            fit=fit, fit_schedule=fit_schedule)
    elif list(cfg.classes) != list(ds.classes):
        raise UserError(f"{out}: the checkpoint was trained on classes {cfg.classes}, this split has {ds.classes}")
    seed_everything(train_config.seed)  # the new layers' initialisation
    model = build_model(cfg, weights=weights)
    if init and not (resume and find_checkpoint(out) is not None):
        cfg.trained_on["init"] = load_init(model, init_state(init), init)
    evaluate_fn = None
    if val_split:
        val = load_dataset(dataset_path, val_split, images, classes=list(ds.classes))
        evaluate_fn = make_evaluate_fn(val, ds.classes)
    train_ds = DetectionDataset(ds, flip=True, seed=train_config.seed, fit=decode_size(cfg),
                                color_jitter=cfg.color_jitter)
    summary = train(model, train_ds, out, train_config, resume=resume, model_config=cfg, evaluate_fn=evaluate_fn,
                    command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary
