"""Datasets (Pascal VOC, COCO), image inputs and image loading."""

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.images import load_image, to_tensor
from rcnn_cli.data.inputs import ImageInput, is_dataset, load_dataset, resolve_inputs

__all__ = ["Dataset", "ImageRecord", "ImageInput", "load_dataset", "resolve_inputs", "is_dataset", "load_image", "to_tensor"]
