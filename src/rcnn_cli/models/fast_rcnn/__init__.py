"""Fast R-CNN (Girshick, ICCV 2015): one convolutional pass per image, RoI pooling of each proposal,
a classifier over N+1 classes and class-specific box regressors trained jointly.

Pieces reused from torchvision: ``GeneralizedRCNNTransform`` (normalise, resize so the shorter side
is ``min_size`` and the longer at most ``max_size``, batch), ``BalancedPositiveNegativeSampler``,
``fastrcnn_loss`` (cross-entropy + smooth L1 on foreground RoIs), ``roi_pool``/``roi_align`` and
``batched_nms``. Box targets use the package's one box coder (:func:`rcnn_cli.boxes.encode`) with
weights ``(10, 10, 5, 5)``, i.e. targets normalised by stds ``(0.1, 0.1, 0.2, 0.2)``.

torchvision's ``FasterRCNN``/``RoIHeads`` only accept ``MultiScaleRoIAlign``, so the classic RoI max
pooling of the paper is wired here by hand.

Interface (torchvision's detection convention)::

    train: model(images, targets) -> {"loss_classifier", "loss_box_reg"}
           images: list[(3, H, W) float in [0, 1]]; targets: list[{"boxes" (M, 4), "labels" (M,) 1..K,
           "proposals" (P, 4)}] (proposals may instead be passed as ``proposals=``), original pixels
    eval:  model(images, proposals=list[(P, 4)]) -> list[{"boxes" (D, 4) original pixels,
           "scores" (D,), "labels" (D,) int64 1..K}]
"""

from rcnn_cli.models.fast_rcnn.config import *  # noqa: F401,F403
from rcnn_cli.models.fast_rcnn.model import *  # noqa: F401,F403
from rcnn_cli.models.fast_rcnn.detector import *  # noqa: F401,F403
from rcnn_cli.models.fast_rcnn.train import *  # noqa: F401,F403
from rcnn_cli.models.fast_rcnn.method import *  # noqa: F401,F403
