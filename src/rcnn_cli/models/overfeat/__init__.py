"""Overfeat (Sermanet et al. 2014): a window classifier + box regressor applied densely, ``rcnn overfeat``.

The network is :class:`rcnn_cli.models.localizer.Localizer` (the lecture's classification +
localization) with a background class, trained on square windows cut from the training images:

- a **positive** window holds one object whose longest side fills ``fill`` (0.4-0.9) of the window's
  side, its centre moved by up to ``jitter`` (1/8) of the side; targets: the object's class and its
  box in the window's normalised coordinates;
- a **negative** window (background, no box) has a side that one of the test ``scales`` gives and
  matches no object (no object with half of its area inside and a fill within 3/4 of ``fill``'s range).

At test time the fully connected heads become convolutions (:func:`dense_heads`): the classifier over
the window's mean-pooled features is a ``w x w`` average pool and a 1x1 convolution with the FC
weights; the regressor's first FC layer over the flattened ``64 x w x w`` map is a ``w x w``
convolution with those weights, its second a 1x1 convolution. One forward pass over an image scaled
by ``s`` then gives every window of ``input_size`` pixels at a stride of 32 pixels (a 224-pixel
window on a 256-pixel image: 2 x 2 windows). Several ``scales`` (chosen from the training boxes
when not given: :func:`choose_scales`) and input ``offsets`` (shifts of the image, in pixels, for a
finer stride) are run; each window's class probabilities above the score threshold give a
candidate box per class, in pixels of the original image. Candidates are merged per class by
:func:`greedy_merge` (Overfeat's section 4.3, ``merge="greedy"``) or by NMS (``merge="nms"``).
"""

from rcnn_cli.models.overfeat.config import *  # noqa: F401,F403
from rcnn_cli.models.overfeat.dense import *  # noqa: F401,F403
from rcnn_cli.models.overfeat.train import *  # noqa: F401,F403
from rcnn_cli.models.overfeat.detector import *  # noqa: F401,F403
from rcnn_cli.models.overfeat.method import *  # noqa: F401,F403
