"""Datasets (Pascal VOC, COCO, YOLO, LabelMe, the built-in shapes), image inputs and image loading.

Import the modules themselves (``rcnn_cli.data.inputs``, ``rcnn_cli.data.images``, ...): this package
re-exports nothing, so that ``import rcnn_cli.data.images`` (in proposal worker processes) stays light.
"""
