"""Looking at a dataset: ground-truth boxes drawn on its images (``rcnn data show``) and the box-size
and aspect-ratio histograms of ``rcnn data info --plot``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset
from rcnn_cli.errors import ImageError
from rcnn_cli.log import logger

__all__ = ["box_statistics", "show_dataset", "plot_box_statistics"]


def box_statistics(ds: Dataset) -> dict[str, object]:
    """Per class: box sizes (sqrt of area, pixels) and aspect ratios (height / width); objects per image."""
    sizes: dict[str, list[float]] = {c: [] for c in ds.classes}
    ratios: dict[str, list[float]] = {c: [] for c in ds.classes}
    for r in ds.records:
        for (x1, y1, x2, y2), lab in zip(np.asarray(r.boxes, np.float64).reshape(-1, 4), r.labels):
            w, h = x2 - x1, y2 - y1
            if w > 0 and h > 0 and lab in sizes:
                sizes[lab].append(float(np.sqrt(w * h)))
                ratios[lab].append(float(h / w))
    counts = [len(r.labels) for r in ds.records]
    return {"sizes": sizes, "aspect_ratios": ratios,
            "mean_objects_per_image": float(np.mean(counts)) if counts else 0.0,
            "max_objects_per_image": int(max(counts)) if counts else 0}


def plot_box_statistics(ds: Dataset, out_dir: str | os.PathLike) -> list[Path]:
    """``box_sizes.png`` and ``aspect_ratios.png`` (one histogram per class, log-spaced bins)."""
    from rcnn_cli.visualize import _pyplot, _savefig

    stats, out_dir, written = box_statistics(ds), Path(out_dir), []
    plt = _pyplot()
    for key, name, xlabel in (("sizes", "box_sizes.png", "box size: sqrt(w * h), pixels"),
                              ("aspect_ratios", "aspect_ratios.png", "aspect ratio h / w")):
        values = [v for vs in stats[key].values() for v in vs]
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        try:
            if values:
                bins = np.geomspace(max(min(values), 1e-3), max(values) * 1.0001, 30)
                for c, vs in stats[key].items():
                    if vs:
                        ax.hist(vs, bins=bins, alpha=0.6, label=f"{c} ({len(vs)})")
                ax.set_xscale("log")
                ax.legend(fontsize="small")
            ax.set(xlabel=xlabel, ylabel="objects", title=f"{ds.root.name} {ds.split or 'all'}: {xlabel.split(':')[0]}")
            written.append(_savefig(fig, out_dir / name))
        finally:
            plt.close(fig)
    return written


def show_dataset(ds: Dataset, out: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Every image (the first ``limit``) with its ground-truth boxes and labels drawn, into ``out``;
    difficult objects are marked; unreadable images are logged and skipped."""
    from rcnn_cli.data.images import load_image
    from rcnn_cli.visualize import class_color, draw_boxes, save_image

    out, written = Path(out), []
    for r in ds.records[: limit or None]:
        try:
            image = load_image(r.path)
        except ImageError as e:
            logger.warning("%s; skipped", e)
            continue
        difficult = list(r.difficult) if len(r.difficult) == len(r.labels) else [False] * len(r.labels)
        texts = [lab + (" (difficult)" if d else "") for lab, d in zip(r.labels, difficult)]
        drawn = draw_boxes(image, np.asarray(r.boxes).reshape(-1, 4), texts,
                           [class_color(lab, ds.classes) for lab in r.labels])
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.image_id) + ".jpg"
        written.append(save_image(drawn, out / name))
    return written
