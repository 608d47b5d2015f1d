"""YOLO v1 (Redmon et al., 2016): detection as one regression from the image to an S x S x (5B + C) tensor.

The image is divided into an ``S x S`` grid (``grid``, 7). Each cell predicts ``B`` boxes
(``boxes_per_cell``, 2), each ``x, y, sqrt(w), sqrt(h), confidence``, and ``C`` class
probabilities ``Pr(class | object)`` shared by its boxes. ``x, y`` are the box centre's offset
inside the cell, ``w, h`` its size relative to the image; all in ``[0, 1]``.

- **Network**: the backbone registry's whole convolutional part (stride 32, frozen batch norms;
  the registry's first modules frozen as for the other detectors), then the paper's head shape: a
  3x3 convolution (stride 2 when the map is ``2S`` wide), leaky ReLU 0.1, two fully connected
  layers (``hidden`` units, leaky ReLU 0.1, dropout 0.5) to ``S * S * (5B + C)``.
- **Input**: the image is resized to a square ``input_size`` (default ``64 * S`` = 448, the
  paper's: "detection often requires fine-grained visual information"), whose 14x14 stride-32 map a
  stride-2 convolution brings to 7x7. ``input_size = 32 * S`` (224 on the 7x7 map) is 4x cheaper
  and coarser.
- **Outputs**: sigmoid on the coordinates and confidences and a softmax over the classes keep each
  prediction in its target's range (the paper's last layer is linear; bounded outputs train stably
  from ImageNet weights in few epochs on small data). The loss is the paper's sum-squared error on them.
- **Loss** (:func:`yolo_loss`), summed over the grid, averaged over the images of the batch:
  ``lambda_coord`` (5) x the error of ``x, y`` and of ``sqrt(w), sqrt(h)`` of the responsible
  predictors; the confidence error of responsible predictors (target: the IoU of the prediction
  with its object) and ``lambda_noobj`` (0.5) x the confidence of the others (target 0); the class
  probability error of cells that hold an object.
- **Responsibility** (:func:`assign_cells`, :func:`build_targets`): an object belongs to the cell
  of its centre; a cell holds at most ``B`` objects (the ``B`` largest); among the cell's
  predictors the one whose current box has the highest IoU with the object is responsible
  (greedily, highest IoU first, one object per predictor). A cell's class target is the mean of its
  objects' one-hot classes.
- **Training** (:func:`train_yolo`, on :func:`rcnn_cli.engine.train`): random horizontal flip,
  random scaling and translation of up to ``jitter`` (20 %) of the image size, exposure and
  saturation scaled by up to ``exposure`` (1.5); SGD with warm-up then steps.
- **Detection** (:class:`YOLODetector`): class-specific confidence ``Pr(class | object) x
  confidence`` for each of the ``S * S * B`` boxes, threshold, per-class NMS, top-K; boxes in pixels
  of the original image.
"""

from rcnn_cli.models.yolo.config import *  # noqa: F401,F403
from rcnn_cli.models.yolo.loss import *  # noqa: F401,F403
from rcnn_cli.models.yolo.model import *  # noqa: F401,F403
from rcnn_cli.models.yolo.detector import *  # noqa: F401,F403
from rcnn_cli.models.yolo.train import *  # noqa: F401,F403
from rcnn_cli.models.yolo.method import *  # noqa: F401,F403
