"""Pictures: detections drawn on images, precision/recall curves, generic line plots.

matplotlib runs on the non-interactive Agg backend (no display needed); every PNG is written
atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rcnn_cli.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from rcnn_cli.boxes import ImageDetections

__all__ = ["PALETTE", "class_color", "draw_boxes", "draw_detections", "plot_lines", "plot_precision_recall", "save_image"]

#: 20 well-separated colours (matplotlib's tab20 reordered so neighbours differ), RGB 0..255.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (199, 199, 199),
)


def class_color(label: str, classes: Sequence[str]) -> tuple[int, int, int]:
    """The colour of ``label``: by its position in ``classes`` (stable across images), else by name."""
    try:
        index = list(classes).index(label)
    except ValueError:
        index = sum(label.encode("utf-8")) * 7  # deterministic for labels outside ``classes``
    return PALETTE[index % len(PALETTE)]


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``fill`` (WCAG relative luminance)."""
    def channel(c: int) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in fill)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast with black (L + 0.05) / 0.05 vs with white 1.05 / (L + 0.05).
    return (0, 0, 0) if (luminance + 0.05) ** 2 > 0.0525 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def draw_boxes(image: Image.Image, boxes, texts: Sequence[str], colors: Sequence[tuple[int, int, int]],
               order: Sequence[int] | None = None) -> Image.Image:
    """A copy of ``image`` with each box ``(N, 4)`` drawn in its colour with its text on a filled tag in
    the same colour (black or white by contrast, readable on any background), in ``order``."""
    out = image.convert("RGB").copy()
    if len(texts) == 0:
        return out
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(1, round(min(w, h) / 200))
    font = _font(max(10, round(min(w, h) / 40)))
    for i in (range(len(texts)) if order is None else order):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        if not all(np.isfinite([x1, y1, x2, y2])):
            continue
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        color = colors[i]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), texts[i], font=font)
        tw, th = right - left, bottom - top
        pad = max(1, line)
        tag_h = th + 2 * pad
        # Above the box when there is room, else just inside its top edge; kept inside the image.
        ty = y1 - tag_h if y1 - tag_h >= 0 else y1
        ty = min(max(ty, 0), max(h - tag_h, 0))
        tx = min(max(x1, 0), max(w - tw - 2 * pad, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + tag_h], fill=color)
        draw.text((tx + pad - left, ty + pad - top), texts[i], fill=_text_color(color), font=font)
    return out


def draw_detections(image: Image.Image, det: "ImageDetections", classes: Sequence[str],
                    score_format: str = "{:.2f}") -> Image.Image:
    """A copy of ``image`` with each detection drawn: a box in its class colour and a label
    ``"<class> <score>"``; lower scores are drawn first (best on top)."""
    texts = [f"{lab} {score_format.format(float(s))}" for lab, s in zip(det.labels, det.scores)]
    colors = [class_color(lab, classes) for lab in det.labels]
    order = np.argsort(np.asarray(det.scores, np.float64), kind="stable")
    return draw_boxes(image, det.boxes, texts, colors, order)


def save_image(image: Image.Image, path: str | os.PathLike, quality: int = 90) -> Path:
    """Save ``image`` atomically; the format follows the suffix (``.jpg`` when there is none)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".jpg")
    fmt = Image.registered_extensions().get(path.suffix.lower(), "JPEG")
    with atomic_path(path) as tmp:
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        image.save(tmp, format=fmt, **kwargs)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, out_png: str | os.PathLike) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return out_png


def plot_lines(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out_png: str | os.PathLike, xlabel: str,
               ylabel: str, title: str, logx: bool = False, xlim: tuple[float, float] | None = None,
               ylim: tuple[float, float] | None = None) -> Path:
    """One line per entry of ``curves`` (``name -> (x, y)``) in one PNG with a legend.

    Used for recall-vs-proposals, recall-vs-IoU and similar plots. ``logx`` gives a log x axis.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        for i, (name, (x, y)) in enumerate(curves.items()):
            color = np.asarray(PALETTE[i % len(PALETTE)]) / 255.0
            ax.plot(np.asarray(x, np.float64), np.asarray(y, np.float64), label=str(name), color=color, linewidth=1.8)
        if logx:
            ax.set_xscale("log")
        if xlim is not None:
            ax.set_xlim(*xlim)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if curves:
            ax.legend(loc="best", fontsize="small")
        return _savefig(fig, out_png)
    finally:
        plt.close(fig)


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip(".") or "class"


def plot_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ap: Mapping[str, float | None],
                          out_dir: str | os.PathLike, title: str = "", classes: Sequence[str] | None = None) -> list[Path]:
    """Precision/recall PNGs: ``pr_<class>.png`` per class and ``pr_overview.png`` with all classes.

    ``curves`` maps a class to ``(recall, precision)`` arrays (in detection-rank order); ``ap`` gives
    the AP (fraction) shown in titles and the legend. Returns the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(classes) if classes is not None else list(curves)
    plt = _pyplot()
    written: list[Path] = []

    def label(c: str) -> str:
        v = ap.get(c)
        return f"{c} (AP {100 * v:.1f})" if v is not None else f"{c} (no objects)"

    for c in classes:
        rec, prec = curves.get(c, (np.zeros(0), np.zeros(0)))
        fig, ax = plt.subplots(figsize=(5.6, 4.8))
        try:
            color = np.asarray(class_color(c, classes)) / 255.0
            if len(rec):
                ax.plot(rec, prec, color=color, linewidth=1.8, drawstyle="steps-post")
            else:
                ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(0, 1.0)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(f"{title + ': ' if title else ''}{label(c)}")
            ax.grid(True, alpha=0.3)
            written.append(_savefig(fig, out_dir / f"pr_{_safe_name(c)}.png"))
        finally:
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        for c in classes:
            rec, prec = curves.get(c, (np.zeros(0), np.zeros(0)))
            color = np.asarray(class_color(c, classes)) / 255.0
            ax.plot(rec, prec, color=color, linewidth=1.6, label=label(c), drawstyle="steps-post")
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(title or "precision / recall")
        ax.grid(True, alpha=0.3)
        if classes:
            ax.legend(loc="best", fontsize="small")
        written.append(_savefig(fig, out_dir / "pr_overview.png"))
    finally:
        plt.close(fig)
    return written


def plot_training(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training curves of a run's ``metrics.jsonl``: every logged loss and the learning rate per
    iteration, and the validation numbers (``val_*``) per epoch when the run had a validation split."""
    import json

    from rcnn_cli.errors import UserError

    path = Path(metrics_jsonl)
    if not path.is_file():
        raise UserError(f"{path}: no metrics.jsonl (not a training run?)")
    iters, epochs = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        (iters if rec.get("type") == "iter" else epochs).append(rec)
    if not iters:
        raise UserError(f"{path}: no logged iterations yet")
    plt = _pyplot()
    val_keys = sorted({k for r in epochs for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 3 if val_keys else 2, figsize=(13 if val_keys else 9, 3.6))
    try:
        x = [r["iteration"] for r in iters]
        for key in sorted({k for r in iters for k in r if k.startswith("loss")}):
            axes[0].plot(x, [r.get(key, np.nan) for r in iters], label=key, lw=1.2)
        axes[0].set(xlabel="iteration", ylabel="loss", title="losses")
        axes[0].legend(fontsize="x-small")
        axes[1].plot(x, [r["lr"] for r in iters], color="black", lw=1.2)
        axes[1].set(xlabel="iteration", ylabel="learning rate", title="schedule")
        if val_keys:
            for key in val_keys:
                pts = [(r["epoch"], r[key]) for r in epochs if key in r]
                axes[2].plot(*zip(*pts), marker="o", label=key[4:], lw=1.2)
            axes[2].set(xlabel="epoch", title="validation")
            axes[2].legend(fontsize="x-small")
        for ax in axes:
            ax.grid(True, alpha=0.3)
        return _savefig(fig, out_png)
    finally:
        plt.close(fig)
