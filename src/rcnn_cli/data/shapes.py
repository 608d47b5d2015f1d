"""The built-in default dataset: coloured shapes on textured, cluttered backgrounds.

Four classes, ``circle``, ``square``, ``star``, ``triangle``, drawn at varied scale, aspect,
rotation and colour, with partial overlap, so that the class is decided by shape and not by
colour. Written in Pascal VOC layout with ``trainval`` and ``test`` splits. The same seed gives
the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rcnn_cli.io import atomic_open, atomic_path

CLASSES = ("circle", "square", "star", "triangle")
SUPERSAMPLE = 2


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour gradient + low-frequency noise texture + clutter (lines, blobs, speckle)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    cells = int(rng.integers(4, 12))
    noise = rng.normal(0, 1, (cells, cells, 3))
    noise = np.asarray(Image.fromarray(((noise - noise.min()) / max(np.ptp(noise), 1e-6) * 255).astype(np.uint8))
                       .resize((size, size), Image.BICUBIC), np.float64) / 255 - 0.5
    img = img + noise * rng.uniform(20, 60)
    img = img + rng.normal(0, rng.uniform(2, 8), img.shape)  # sensor-like speckle
    base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(3, 10))):  # clutter lines
        pts = [tuple(rng.uniform(-0.1, 1.1, 2) * size) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 7))):  # soft irregular blobs (not one of the classes)
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.03, 0.08) * size
        n = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = r * rng.uniform(0.5, 1.3, n)
        draw.polygon([(cx + rr * math.cos(a), cy + rr * math.sin(a)) for a, rr in zip(angles, radii)],
                     fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return base.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 1.5))))


def _outline(kind: str, cx: float, cy: float, w: float, h: float, rotation: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of half-sizes ``w, h`` around ``(cx, cy)``, rotated by ``rotation``."""
    if kind == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        pts = np.stack([np.cos(angles) * w, np.sin(angles) * h], 1)
    elif kind == "square":
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], float)
    elif kind == "triangle":
        pts = np.array([[0, -h], [w, h], [-w, h]], float)
    else:  # five-pointed star
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(angles) * radius * w, np.sin(angles) * radius * h], 1)
    c, s = math.cos(rotation), math.sin(rotation)
    rot = pts @ np.array([[c, s], [-s, c]])
    return [(cx + x, cy + y) for x, y in rot]


def _too_close(a: np.ndarray, b: np.ndarray) -> bool:
    """More than partial overlap: IoU above 0.2, or one box mostly inside the other."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) > 0.2 or inter / min(area_a, area_b) > 0.4


def make_image(rng: np.random.Generator, size: int = 256, max_objects: int = 4, single: bool = False
               ) -> tuple[Image.Image, list[tuple[str, list[int]]]]:
    """One image and its objects ``[(class, [xmin, ymin, xmax, ymax]), ...]`` (integer pixels).

    ``single``: exactly one object, half-size 8-40 % of the image (localization data)."""
    big = size * SUPERSAMPLE
    canvas = _background(rng, size).resize((big, big), Image.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[str, list[int]]] = []
    boxes: list[np.ndarray] = []
    for _ in range(1 if single else int(rng.integers(1, max_objects + 1))):
        for _attempt in range(200 if single else 20):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            scale = rng.uniform(*((0.08, 0.4) if single else (0.09, 0.24))) * size  # half-size in output pixels
            aspect = math.exp(rng.uniform(-0.35, 0.35))
            w, h = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
            rotation = rng.uniform(-0.3, 0.3) if kind in ("square", "triangle") else rng.uniform(-math.pi, math.pi) * (kind == "star")
            margin = min(0.5, 1.1 * scale / size * max(math.sqrt(aspect), 1 / math.sqrt(aspect))) if single else 0.12
            cx, cy = rng.uniform(margin, 1 - margin, 2) * size
            pts = np.array(_outline(kind, cx, cy, w, h, rotation))
            box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
            if box[0] < 0 or box[1] < 0 or box[2] > size - 1 or box[3] > size - 1:
                continue
            if any(_too_close(box, b) for b in boxes):  # partial overlap only
                continue
            fill = tuple(int(v) for v in rng.uniform(0, 255, 3))
            outline = tuple(int(v) for v in rng.uniform(0, 255, 3))
            draw.polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in pts], fill=fill, outline=outline,
                         width=int(rng.integers(0, 3)) * SUPERSAMPLE)
            boxes.append(box)
            objects.append((kind, [int(math.floor(box[0])), int(math.floor(box[1])),
                                   int(math.ceil(box[2])), int(math.ceil(box[3]))]))
            break
    return canvas.resize((size, size), Image.LANCZOS), objects


def _annotation_xml(image_id: str, size: int, objects: list[tuple[str, list[int]]]) -> str:
    parts = [
        "<annotation>", "  <folder>shapes</folder>", f"  <filename>{image_id}.jpg</filename>",
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
    ]
    for name, (x1, y1, x2, y2) in objects:
        parts += [
            "  <object>", f"    <name>{name}</name>", "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>", "    <difficult>0</difficult>",
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_shapes(out: str | Path, train: int = 200, test: int = 50, size: int = 256, seed: int = 0,
                single: bool = False) -> Path:
    """Write the shapes dataset in VOC layout under ``out``; returns ``out``. ``single``: one object
    per image, of varied scale and position (the localization task's data).

    Image ``k`` of a split is drawn from its own random stream (seed, split, k), so the two splits
    are independent and the same arguments always give the same bytes.
    """
    out = Path(out)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split, count, split_key in (("trainval", train, 0), ("test", test, 1)):
        ids = []
        for k in range(count):
            image_id = f"{split}_{k:05d}"
            rng = np.random.default_rng([seed, split_key, k])
            img, objects = make_image(rng, size, single=single)
            with atomic_path(out / "JPEGImages" / f"{image_id}.jpg") as tmp:
                img.save(tmp, format="JPEG", quality=92)
            with atomic_open(out / "Annotations" / f"{image_id}.xml") as f:
                f.write(_annotation_xml(image_id, size, objects))
            ids.append(image_id)
        with atomic_open(out / "ImageSets" / "Main" / f"{split}.txt") as f:
            f.write("\n".join(ids) + "\n")
    return out
