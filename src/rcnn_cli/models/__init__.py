"""Detection models trained by :mod:`rcnn_cli.engine`: Fast R-CNN (:mod:`.fast_rcnn`) and Faster R-CNN
(:mod:`.faster_rcnn`). Import the submodules directly; nothing heavy is imported here."""
