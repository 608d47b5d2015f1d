"""The one trainer (:mod:`.trainer`) shared by every trained method, its checkpoints (:mod:`.checkpoint`),
the time budget (:mod:`.budget`) and the training dataset of the detectors (:mod:`.dataset`)."""

from rcnn_cli.engine.checkpoint import CHECKPOINT_DIR, find_checkpoint, load_checkpoint, write_checkpoint
from rcnn_cli.engine.trainer import TrainConfig, collate_detection, default_lr_steps, lr_at, time_iterations, train

__all__ = ["CHECKPOINT_DIR", "TrainConfig", "collate_detection", "default_lr_steps", "find_checkpoint",
           "load_checkpoint", "lr_at", "time_iterations", "train", "write_checkpoint"]

