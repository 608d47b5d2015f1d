#!/usr/bin/env python
"""Benchmark decoding large photos at the size the network needs (``load_image_for``) against the
full decode, side by side.

For each photo size, the time per image of what a Faster R-CNN training step does before the trunk:

* **full**: ``load_image`` (the whole photo), ``to_tensor`` (its float copy), the model's own
  normalise-and-resize (``GeneralizedRCNNTransform``);
* **fit**: ``load_image_for`` (JPEG DCT scaling, then an integer box filter, never below the
  network's size), ``to_tensor``, the same transform;

and, with ``--train``, one training iteration (2 images, forward, backward, SGD step) of an
EfficientNet-Lite0 Faster R-CNN through ``DetectionDataset`` with and without ``fit``. Photos are
synthetic JPEGs (smooth gradients plus noise, quality 90). Variants are interleaved over
``--repeats`` rounds and the best round is kept.

    python scripts/bench_decode.py [--sizes 640x480,1920x1080,4000x3000] [--min-size 480 --max-size 736]
        [--repeats 5] [--train]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_photo(path: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(width)
    x, y = np.meshgrid(np.linspace(0, 255, width, dtype=np.float32), np.linspace(0, 255, height, dtype=np.float32))
    pixels = np.stack([x, y, 255 - x], -1) + rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def prepare_seconds(path: Path, fit: bool, transform) -> float:
    from rcnn_cli.data.images import load_image, load_image_for, to_tensor

    t = time.perf_counter()
    image = load_image_for(path, transform.min_size[-1], transform.max_size)[0] if fit else load_image(path)
    with torch.no_grad():
        transform([to_tensor(image)])
    return time.perf_counter() - t


def train_seconds(folder: Path, fit: bool, min_size: int, max_size: int, iters: int = 3) -> float:
    """Seconds per training iteration (the first one left out) of 2 photos."""
    from rcnn_cli.data.dataset import Dataset, ImageRecord
    from rcnn_cli.engine.dataset import DetectionDataset
    from rcnn_cli.engine.trainer import collate_detection
    from rcnn_cli.models import faster_rcnn as fr

    paths = sorted(folder.glob("train*.jpg"))
    w, h = Image.open(paths[0]).size
    box = np.array([[w * 0.3, h * 0.3, w * 0.6, h * 0.7]], np.float32)
    ds = Dataset(folder, "bench", ["a"], [ImageRecord(p.stem, p, w, h, box, ["a"]) for p in paths])
    cfg = fr.default_config(["a"], min_size=min_size, max_size=max_size, rpn_pre_nms_top_n_train=2000)
    model = fr.build_model(cfg, weights="none").train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    data = DetectionDataset(ds, flip=False, fit=fr.decode_size(cfg) if fit else None)
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        images, targets = collate_detection([data[2 * i % len(data)], data[(2 * i + 1) % len(data)]])
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.mean(times[1:]))


def main(argv=None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="640x480,1920x1080,4000x3000")
    p.add_argument("--min-size", type=int, default=480)
    p.add_argument("--max-size", type=int, default=736)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", action="store_true", help="also time training iterations (largest size only)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    transform = GeneralizedRCNNTransform(a.min_size, a.max_size, [0.5] * 3, [0.5] * 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in a.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            path = folder / f"{w}x{h}.jpg"
            make_photo(path, w, h)
            best = {False: [], True: []}
            for _ in range(a.repeats):
                for fit in (False, True):
                    best[fit].append(prepare_seconds(path, fit, transform))
            rows.append({"what": f"decode + tensor + resize, {w}x{h}", "full_ms": 1000 * min(best[False]),
                         "fit_ms": 1000 * min(best[True])})
        if a.train:
            for i in range(8):
                make_photo(folder / f"train{i}.jpg", w, h)
            full, fit = train_seconds(folder, False, a.min_size, a.max_size), train_seconds(folder, True, a.min_size, a.max_size)
            rows.append({"what": f"training iteration, 2 x {w}x{h}", "full_ms": 1000 * full, "fit_ms": 1000 * fit})
    table = Table(title=f"network input: shorter side {a.min_size}, longer at most {a.max_size}; "
                        f"{torch.get_num_threads()} threads")
    for col in ("what", "full (ms)", "fit (ms)", "speed-up"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in rows:
        table.add_row(r["what"], f"{r['full_ms']:.1f}", f"{r['fit_ms']:.1f}", f"{r['full_ms'] / r['fit_ms']:.2f}x")
    Console().print(table)
    return rows


if __name__ == "__main__":
    main()
