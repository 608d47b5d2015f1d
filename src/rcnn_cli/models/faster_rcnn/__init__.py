"""Faster R-CNN on torchvision's detection modules, with the package's backbone registry.

The network (Ren et al., 2015) is torchvision's :class:`~torchvision.models.detection.FasterRCNN`
wired to a trunk of :mod:`rcnn_cli.backbones`:

- **Resize and normalise** inside the model (``GeneralizedRCNNTransform``): shorter side
  ``min_size`` (600), longer side at most ``max_size`` (1000); the registry's mean/std of the
  backbone (e.g. EfficientNet-Lite's TF ``(x-127)/128``) become ``image_mean``/``image_std``. The
  model takes RGB ``(3, H, W)`` tensors in ``[0, 1]`` at any size and returns boxes in original
  pixels.
- **Trunk**: ``build_trunk`` (stride 16: EfficientNet-Lite0 blocks 0-4, 112 channels; VGG16
  conv5_3, 512; ResNet-50 layer3, 1024; AlexNet conv5, 256) with frozen batch norms (batches of 2
  images cannot estimate statistics) and the first layers frozen as in the papers (VGG16
  conv1-conv2; ResNet-50 conv1 + layer1; EfficientNet-Lite0 stem + blocks 0-1). Or a feature
  pyramid (``fpn=True``): EfficientNet-Lite0's P3-P6 (blocks 2, 4, 6 + a max-pooled P6, 64 channels
  as EfficientDet-D0's, one fitted anchor size per level), or torchvision's ResNet-50 and
  MobileNetV3 pyramids with the registry weights copied in.
- **RPN**: a 3x3 conv and two 1x1 convs (objectness and 4 deltas per anchor, torchvision's
  ``RPNHead``); anchors ``anchor_sizes`` x ``aspect_ratios`` (paper: 128, 256, 512 and 0.5, 1, 2)
  at every feature cell, centred on ``(x * 16, y * 16)`` (torchvision's convention; the Caffe
  original centred them on ``x * 16 + 7.5``). Anchors with IoU >= 0.7 with a ground-truth box (and
  the best anchor of each box) are positive, < 0.3 negative, the rest ignored; 256 anchors per
  image with at most half positive. Proposals: top ``pre_nms_top_n`` by objectness, NMS at 0.7,
  top ``post_nms_top_n`` kept (12000/2000 in training, 6000/300 at test).
- **Head**: ``MultiScaleRoIAlign`` to 7x7 and two fully connected layers of 1024 (``TwoMLPHead``),
  or the backbone's own layers after the trunk (``head="backbone"``: VGG16 fc6/fc7 as in the paper,
  ResNet-50 layer4, EfficientNet-Lite0 blocks 5-6), then a softmax over K+1 classes and
  class-specific box deltas (``FastRCNNPredictor``). 128 RoIs per image with 25 % foreground
  (IoU >= 0.5), as py-faster-rcnn.
- **Losses** (the four the lecture lists, each logged by the engine): ``loss_objectness`` (RPN
  classification, binary cross-entropy), ``loss_rpn_box_reg`` (RPN regression, smooth L1),
  ``loss_classifier`` (head classification, cross-entropy), ``loss_box_reg`` (head regression,
  smooth L1 on foreground).

**Box coding**: torchvision's RPN and RoI heads encode and decode with its ``BoxCoder`` (RPN
weights ``(1, 1, 1, 1)``, head ``(10, 10, 5, 5)``, i.e. targets normalised by stds 0.1/0.2). That is
the same coding as :mod:`rcnn_cli.boxes` (``encode``/``decode`` wrap the very same ``BoxCoder``):
one implementation in the package.

Model directory (``rcnn faster train --out RUN_DIR``): ``model.safetensors`` (weights) and
``config.json`` (everything needed to rebuild the network; see :func:`load_model`).
"""

from rcnn_cli.models.faster_rcnn.config import *  # noqa: F401,F403
from rcnn_cli.models.faster_rcnn.model import *  # noqa: F401,F403
from rcnn_cli.models.faster_rcnn.detector import *  # noqa: F401,F403
from rcnn_cli.models.faster_rcnn.train import *  # noqa: F401,F403
from rcnn_cli.models.faster_rcnn.method import *  # noqa: F401,F403
