"""Training Fast R-CNN on a dataset and its proposals file with the one trainer; validation."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.models.fast_rcnn.config import FastRCNNConfig, NAME
from rcnn_cli.models.fast_rcnn.model import build_fast_rcnn, FastRCNN
from rcnn_cli.models.fast_rcnn.detector import FastRCNNDetector


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
