"""The one trainer (:mod:`.trainer`) shared by every trained method, and its checkpoints (:mod:`.checkpoint`)."""

from rcnn_cli.engine.checkpoint import CHECKPOINT_DIR, find_checkpoint, load_checkpoint, write_checkpoint
from rcnn_cli.engine.trainer import TrainConfig, collate_detection, default_lr_steps, lr_at, train

__all__ = ["CHECKPOINT_DIR", "TrainConfig", "collate_detection", "default_lr_steps", "find_checkpoint",
           "load_checkpoint", "lr_at", "train", "write_checkpoint"]


def __getattr__(name: str):
    if name == "DetectionDataset":  # importable from here too, without importing data at start-up
        from rcnn_cli.data.torch_dataset import DetectionDataset

        return DetectionDataset
    raise AttributeError(name)
