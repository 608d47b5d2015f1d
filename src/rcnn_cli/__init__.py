"""rcnn: region-based CNN object detection (R-CNN, Fast R-CNN, Faster R-CNN) as a toolkit.

The command-line interface (``rcnn ...``) is a thin layer over this package; every stage is
usable from Python. Boxes are ``x1, y1, x2, y2`` in pixels unless a name says otherwise.
"""

__version__ = "0.1.0"


def load(run_dir, device: str = "auto", **options):
    """The detector of a run directory: ``rcnn_cli.load("RUN")("photo.jpg") -> ImageDetections``.

    See :func:`rcnn_cli.registry.load_detector` (``config=DetectConfig(...)`` and the kind's options).
    """
    from rcnn_cli.registry import load_detector

    return load_detector(run_dir, device=device, **options)
