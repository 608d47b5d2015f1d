"""Training YOLO v1 on a labelled split with the one trainer; validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.log import logger
from rcnn_cli.models.yolo.config import NAME, YOLOConfig
from rcnn_cli.models.yolo.model import _model_config_from, build_model
from rcnn_cli.models.yolo.detector import YOLODetector


def make_evaluate_fn(dataset, classes: Sequence[str]) -> Callable[[nn.Module, int], dict]:
    """``evaluate_fn(model, epoch) -> {"mAP": voc12}`` for the trainer, through the one inference loop."""
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset

    def evaluate_fn(model: nn.Module, epoch: int) -> dict:
        dets = detect_dataset(YOLODetector(model), dataset, classes)
        value = float(evaluate(dataset, dets, metric="voc12")["mAP"])
        return {"mAP_voc12": value, "mAP": value}

    return evaluate_fn


def train_yolo(dataset_path: str | Path, split: str | None, out: str | Path, model: YOLOConfig | None,
               train_config, *, images: str | Path | None = None, val_split: str | None = None,
               resume: bool = False, command: str = "rcnn yolo train", sources: dict[str, str] | None = None) -> dict:
    """Train YOLO v1 (``model``: its :class:`YOLOConfig`, the classes taken from the data; ``None``: the
    defaults) on a labelled split with :func:`rcnn_cli.engine.train` and ``train_config`` (a
    :class:`rcnn_cli.engine.trainer.TrainConfig`). Writes ``out/model.safetensors`` and
    ``out/config.json``; returns the engine's summary (+ ``"model_config"``). With ``resume``, the
    recorded model configuration is used."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.data.inputs import load_dataset, load_training_dataset, training_split
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine import train
    from rcnn_cli.device import seed_everything

    out = Path(out)
    split = training_split(dataset_path, split)
    ds = load_training_dataset(dataset_path, split, images)
    if resume and (out / "config.json").is_file():
        cfg = _model_config_from(out)
        logger.info("resuming with the model configuration recorded in %s", out / "config.json")
    else:
        cfg = replace(model or YOLOConfig(), classes=list(ds.classes))
        cfg.weights_id = weights_id(cfg.backbone, cfg.weights)
        cfg.trained_on = {"dataset": str(Path(dataset_path).resolve()), "split": split, "images": len(ds.records)}
    if list(cfg.classes) != list(ds.classes):
        raise UserError(f"{out}: the checkpoint was trained on classes {cfg.classes}, this split has {ds.classes}")
    seed_everything(train_config.seed)
    network = build_model(cfg, weights=cfg.weights)
    evaluate_fn = None
    if val_split:
        evaluate_fn = make_evaluate_fn(load_dataset(dataset_path, val_split, images, classes=list(ds.classes)), ds.classes)
    summary = train(network, DetectionDataset(ds, flip=True, seed=train_config.seed), out, train_config, resume=resume,
                    model_config=cfg, evaluate_fn=evaluate_fn, command=command, kind=NAME, sources=sources)
    summary["model_config"] = cfg.to_dict()
    return summary
