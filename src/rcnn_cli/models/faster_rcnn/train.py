"""Training Faster R-CNN on a labelled split: settings chosen from the data, the one trainer, validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Sequence

from torch import nn

from rcnn_cli.config import format_duration
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.method import DEFAULT_BACKBONE
from rcnn_cli.models.faster_rcnn.config import FasterRCNNConfig, NAME
from rcnn_cli.models.faster_rcnn.model import (
    _model_config_from, build_model, COCO_INITS, decode_size, init_state, load_init)
from rcnn_cli.models.faster_rcnn.detector import FasterRCNNDetector

if TYPE_CHECKING:
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.fitting import Fitted


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


def _for_init(model: FasterRCNNConfig, init: str | None, given: Collection[str]) -> FasterRCNNConfig:
    """The configuration ``--init coco`` implies: its backbone with a pyramid (the five anchor sizes
    unless given; the new backbone's normalisation where the old one's was the default), and no
    ImageNet weights (every backbone tensor comes from COCO); ``model`` itself for any other init."""
    if init not in COCO_INITS:
        return model
    from rcnn_cli.backbones import get_spec

    spec = get_spec(model.backbone)
    own = {k: None for k, mine in (("image_mean", spec.mean), ("image_std", spec.std))
           if list(getattr(model, k)) == list(mine)}
    anchors = {} if "anchor_sizes" in given else {"anchor_sizes": None}  # the pyramid's
    return replace(model, backbone=COCO_INITS[init][0], fpn=True, weights="none", **own, **anchors)


#: Larger backbones a time budget may buy instead of the default one, smallest first: none is faster than
#: a smaller one, so :func:`fit_backbone` stops at the first whose schedule misses the budget. Only those
#: measured against the default at equal time (docs/quality.md): Lite1 was not.
LARGER_BACKBONES = ("efficientnet_lite2",)


def training_dataset(ds, cfg: FasterRCNNConfig, seed: int):
    """The training split ``ds`` as the trainer reads it: flips, the configuration's scales and jitters."""
    from rcnn_cli.engine.dataset import DetectionDataset

    return DetectionDataset(ds, flip=True, seed=seed, fit=decode_size(cfg), color_jitter=cfg.color_jitter,
                            hue_jitter=cfg.hue_jitter, crop_scale=cfg.crop_scale, mosaic=cfg.mosaic)


def backbone_is_fitted(cfg: FasterRCNNConfig, given: Collection[str], train_config, init: str | None) -> bool:
    """Whether :func:`fit_backbone` chooses the backbone: with a time budget, in one process, when neither
    the backbone nor its weights (nor ``--init``) were given."""
    from rcnn_cli.device import dist_info

    return (bool(train_config.time_budget) and "backbone" not in given and cfg.backbone == DEFAULT_BACKBONE
            and str(cfg.weights) == "imagenet" and init is None and dist_info()[1] == 1)


def fit_backbone(ds, cfg: FasterRCNNConfig, train_config: TrainConfig, fitted: Fitted,
                 budget_for: Callable[[str], float] | None = None) -> tuple[FasterRCNNConfig, TrainConfig]:
    """The largest of :data:`LARGER_BACKBONES` whose whole schedule (``train_config.epochs``) fits its
    budget at its speed measured here, on this data and machine (:func:`rcnn_cli.engine.time_iterations`,
    the budget's own rule :func:`rcnn_cli.engine.budget.plan_epochs`), else ``cfg``'s default. A
    backbone's budget is ``budget_for(name)`` seconds (``rcnn pipeline``'s: what its later stages leave
    with that backbone), by default ``train_config.time_budget``, which is the default backbone's. The
    choice and the measured figures go into ``fitted``; the seconds spent measuring come off the budget.
    Returns the configuration and the training configuration (its budget the chosen backbone's)."""
    import math
    import time

    from rcnn_cli.backbones import weights_id
    from rcnn_cli.engine import budget, time_iterations

    start, c = time.perf_counter(), train_config
    per_epoch, lines = math.ceil(len(ds.records) / c.batch_size), []
    chosen, chosen_budget = cfg, c.time_budget
    for name in LARGER_BACKBONES:
        candidate = replace(cfg, backbone=name, weights_id=weights_id(name, cfg.weights))
        per_iter = time_iterations(build_model(candidate, weights=cfg.weights),
                                   training_dataset(ds, candidate, c.seed), c)
        stage_s = budget_for(name) if budget_for else c.time_budget
        try:
            fit = budget.plan_epochs(stage_s, per_iter, per_epoch, spent_s=time.perf_counter() - start)
        except UserError:  # not one epoch
            fit = 0
        lines.append(f"{name}: {min(fit, c.epochs)} of {c.epochs} epochs at {per_iter:.2f} s per iteration in "
                     f"{format_duration(stage_s)}")
        if fit < c.epochs:
            break
        chosen, chosen_budget = candidate, stage_s
    spent = time.perf_counter() - start
    fitted.choose("backbone", chosen.backbone,
                  f"the largest whose whole schedule ({c.epochs} epochs x {per_epoch} iterations) fits the budget at "
                  f"its speed measured here: {', '.join(lines)}; measured in {spent:.0f} s, taken from the "
                  "budget")
    return chosen, replace(c, time_budget=max(chosen_budget - spent, 1.0))


def _new_config(ds, dataset_path, split, model: FasterRCNNConfig, given: Collection[str], train_config, sources,
                fit: bool, fit_schedule: bool, init: str | None = None,
                budget_for: Callable[[str], float] | None = None):
    """A new run's configuration: ``model`` for the split's classes with every data-dependent field not
    ``given`` chosen by :func:`rcnn_cli.fitting.fit_faster` (with ``fit``; without it only
    ``auto_anchors`` fits the anchors), the training configuration (epochs chosen with
    ``fit_schedule``) and the settings' sources with the chosen ones marked; ``budget_for``: see
    :func:`fit_backbone`."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.device import resolve_device
    from rcnn_cli.fitting import Fitted, anchor_sizes_from, data_stats, fit_faster

    stats = data_stats(ds)  # a split without one valid box: a one-line error before any training
    cfg = replace(model, classes=list(ds.classes), weights_id=weights_id(model.backbone, model.weights),
                  weights=str(model.weights))
    fitted = Fitted()
    if fit:
        cfg, fitted = fit_faster(stats, cfg, given, resolve_device(train_config.device).type, train_config.batch_size,
                                 schedule=fit_schedule)
    elif cfg.auto_anchors:
        cfg.anchor_sizes = anchor_sizes_from(stats, len(cfg.anchor_sizes), cfg.min_size, cfg.max_size)
        logger.info("anchor sizes fitted to the training boxes: %s", ", ".join(f"{s:g}" for s in cfg.anchor_sizes))
    if "epochs" in fitted.values:
        train_config = replace(train_config, epochs=int(fitted.values["epochs"]), lr_steps=None)
    if fit and backbone_is_fitted(cfg, given, train_config, init):
        cfg, train_config = fit_backbone(ds, cfg, train_config, fitted, budget_for)
    cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records),
                      "fitted": fitted.record()}
    sources = dict(sources or {}, **{k: f"chosen: {r}" for k, r in fitted.reasons.items()})
    fitted.print("settings chosen from the training data (flags override)")
    return cfg, train_config, sources


def train_faster(dataset_path: str | Path, split: str | None, out: str | Path, model: FasterRCNNConfig | None,
                 train_config, *, given: Collection[str] = (), fit: bool = True, fit_schedule: bool = False,
                 images: str | Path | None = None, val_split: str | None = None, resume: bool = False,
                 init: str | None = None, command: str = "rcnn faster train",
                 sources: dict[str, str] | None = None, budget_for: Callable[[str], float] | None = None) -> dict:
    """Train a Faster R-CNN (``model``: its :class:`FasterRCNNConfig`, the classes taken from the data;
    ``None``: the defaults) on a labelled dataset split with :func:`rcnn_cli.engine.train` and
    ``train_config`` (an :class:`rcnn_cli.engine.trainer.TrainConfig`).

    ``given`` names the fields the caller set; with ``fit`` (default) every data-dependent one not
    given (``min_size``, ``max_size``, ``train_min_sizes``, ``anchor_sizes``, ``auto_anchors``, the
    RPN's training pre-NMS and test post-NMS counts, detections per image) is chosen from the
    training split by :func:`rcnn_cli.fitting.fit_faster`, printed once with its reason and recorded;
    ``fit_schedule`` also chooses the epochs (and their steps); with a time budget the backbone is
    chosen too where nothing fixes it (:func:`fit_backbone`, each candidate's budget ``budget_for(name)``
    seconds where given, else ``train_config``'s); ``fit=False``: the configuration's
    values (the paper's by default). ``auto_anchors`` replaces the anchor sizes by
    :func:`rcnn_cli.fitting.anchor_sizes_from` of the training boxes (as many sizes as given, 3 by default, 5 with
    ``fpn``); ``train_min_sizes`` turns on multi-scale training (each image's shorter side drawn from
    them and ``min_size``). ``init``: a starting point for every layer but the box predictor
    (:func:`init_state`: ``coco`` means torchvision's COCO ``fasterrcnn_resnet50_fpn`` and its
    architecture, ``--backbone resnet50 --fpn``; or a file). ``resume`` continues ``out``'s checkpoint
    with the model configuration recorded there. Writes ``out/model.safetensors`` and
    ``out/config.json`` (model + training settings); returns the engine's summary (+ ``"model_config"``).
    """
    model = model or FasterRCNNConfig()
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine import find_checkpoint, train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    if train_config.patience is not None and not val_split:
        raise UserError("--patience needs --val-split (early stopping watches the validation mAP)")
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    model = _for_init(model, init, given)
    weights = model.weights
    cfg = None
    if resume and (out / "config.json").is_file():
        try:
            cfg = _model_config_from(out)
            logger.info("resuming with the model configuration recorded in %s", out / "config.json")
        except UserError:
            cfg = None
    if cfg is None:
        cfg, train_config, sources = _new_config(ds, dataset_path, split, model, given, train_config, sources,
                                                 fit=fit, fit_schedule=fit_schedule, init=init,
                                                 budget_for=budget_for)
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
    summary = train(model, training_dataset(ds, cfg, train_config.seed), out, train_config, resume=resume,
                    model_config=cfg, evaluate_fn=evaluate_fn, command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary
