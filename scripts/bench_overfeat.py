#!/usr/bin/env python
"""Overfeat's efficient sliding window: the dense pass (FC layers as convolutions) vs the naive loop.

One run, the same image, scales, windows and weights (EfficientNet-Lite0's ImageNet trunk; the
heads seeded at random: timing and equality do not depend on training):

- **dense**: per scale, one trunk pass over the whole scaled image, then the heads as convolutions
  (:func:`rcnn_cli.models.overfeat.dense_heads`): every window at a stride of 32 pixels at once;
- **naive**: per scale, every window cropped from the same scaled input and pushed through the
  trunk and the FC heads on its own (batches of ``--batch``), as a sliding window without the trick.

Printed: windows per scale, seconds for each way, their ratio (goal >= 5x at 3 scales on a 480 x 640
image), and the heads' largest differences. Two differences: *map* compares the dense heads with the
FC heads on the same trunk map (the conversion itself: ~1e-6); *image* compares with the heads on
each window's own crop, where the convolutions near a window's border see zero padding instead of
the neighbouring pixels: that is the difference between the two ways, not an error of either.

    python scripts/bench_overfeat.py [--height 480 --width 640] [--scales 1,0.75,0.5] [--threads 2]
        [--repeats 3] [--batch 32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rcnn_cli.log import setup_logging


def build(args):
    from rcnn_cli.models.localizer import Localizer
    from rcnn_cli.models.overfeat import OverfeatConfig, OverfeatDetector

    torch.manual_seed(0)
    cfg = OverfeatConfig(classes=["a", "b", "c"], scales=args.scales, input_size=args.window)
    return OverfeatDetector(Localizer(cfg, weights="imagenet"))


def dense(det, x: torch.Tensor):
    from rcnn_cli.models.overfeat import dense_heads

    fmap = det.model.trunk(x)
    return fmap, dense_heads(det.model, fmap)


def naive(det, x: torch.Tensor, rows: int, cols: int, batch: int):
    """Every ``window``-pixel crop of ``x`` at a stride of 32 through the trunk and the FC heads:
    logits ``(V, C+1)`` and boxes ``(V, C', 4)``, row-major."""
    w, logits, boxes = det.model.rcnn_config.input_size, [], []
    crops = [x[..., 32 * i:32 * i + w, 32 * j:32 * j + w] for i in range(rows) for j in range(cols)]
    crops = [torch.nn.functional.pad(c, (0, w - c.shape[-1], 0, w - c.shape[-2])) for c in crops]
    for k in range(0, len(crops), batch):
        chunk = torch.cat(crops[k:k + batch]).contiguous(memory_format=torch.channels_last)
        lg, bx = det.model.heads(det.model.trunk(chunk))
        logits.append(lg[:, 0]), boxes.append(bx[:, 0])
    return torch.cat(logits), torch.cat(boxes)


def flat(t: torch.Tensor) -> torch.Tensor:
    """Dense ``(1, ..., R, C)`` -> ``(R * C, ...)`` row-major, as :func:`naive` orders windows."""
    return t[0].flatten(-2).movedim(-1, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 0.75, 0.5])
    p.add_argument("--window", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json")
    args = p.parse_args()
    setup_logging(False)
    torch.set_num_threads(args.threads)
    det = build(args)
    image = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    rows_out, total = [], {"dense": 0.0, "naive": 0.0}
    with torch.inference_mode():
        for s in args.scales:
            x = det.prepare(image, s, 0)
            dense(det, x)  # warm-up of this input size
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                fmap, (lg, bx) = dense(det, x)
            t_dense = (time.perf_counter() - t0) / args.repeats
            rows, cols = lg.shape[-2:]
            t0 = time.perf_counter()
            n_lg, n_bx = naive(det, x, rows, cols, args.batch)
            t_naive = time.perf_counter() - t0
            w = det.model.rcnn_config.input_size // 32
            fc = [det.model.heads(fmap[..., i:i + w, j:j + w]) for i in range(rows) for j in range(cols)]
            map_diff = max(float((flat(lg) - torch.cat([f[0][:, 0] for f in fc])).abs().max()),
                           float((flat(bx) - torch.cat([f[1][:, 0] for f in fc])).abs().max()))
            img_diff = max(float((flat(lg) - n_lg).abs().max()), float((flat(bx) - n_bx).abs().max()))
            total["dense"] += t_dense
            total["naive"] += t_naive
            rows_out.append({"scale": s, "input": list(x.shape[-2:]), "windows": rows * cols, "grid": [rows, cols],
                             "dense_s": t_dense, "naive_s": t_naive, "ratio": t_naive / t_dense,
                             "map_diff": map_diff, "image_diff": img_diff})
    print(f"Overfeat dense vs naive sliding window: {args.height} x {args.width} image, {args.window}-pixel "
                  f"windows at stride 32, EfficientNet-Lite0, {torch.get_num_threads()} threads")
    print("| scale | input | windows | dense s | naive s | naive / dense | max diff (map) | max diff (image) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['scale']} | {r['input'][0]} x {r['input'][1]} | {r['windows']} ({r['grid'][0]} x "
                      f"{r['grid'][1]}) | {r['dense_s']:.3f} | {r['naive_s']:.2f} | {r['ratio']:.1f}x | "
                      f"{r['map_diff']:.1e} | {r['image_diff']:.2f} |")
    ratio = total["naive"] / total["dense"]
    n = sum(r["windows"] for r in rows_out)
    print(f"| all {len(rows_out)} scales | | {n} | {total['dense']:.3f} | {total['naive']:.2f} | "
                  f"**{ratio:.1f}x** (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'}) | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows_out, "ratio": ratio, "threads": torch.get_num_threads()}, f, indent=1)


if __name__ == "__main__":
    main()
