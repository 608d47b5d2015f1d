#!/usr/bin/env python
"""Benchmark the R-CNN region network's runtimes side by side, one run, the same crops and weights.

For each warp size: crops/s of ``FeatureExtractor`` (warping included, as ``extract-features`` and
``rcnn detect`` run it) in eager NCHW (rcnn 0.1's path), eager channels_last (the torch default
now), ONNX Runtime and OpenVINO (when installed), each beside the bare network in the same runtime;
the features' largest difference from eager NCHW; the region network's achieved GFLOP/s next to the
machine's single-precision matrix-multiply GFLOP/s measured in the same run (the limit); and the
R-CNN test time per image at ``--proposals`` regions.

    python scripts/bench_runtime.py [--warps 64,128,224] [--crops 64] [--proposals 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int = 1024) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    return 2 * n ** 3 / best_of(lambda: a @ b, 5) / 1e9


def network_gflop(model: torch.nn.Module, size: int) -> float:
    """Multiply-adds x 2 of one crop, counted by hooks on the conv and linear layers."""
    total = [0.0]

    def conv(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total[0] / 1e9


def main() -> None:
    from rcnn_cli.rcnn.features import FeatureExtractor, warp_regions
    from rcnn_cli.backends import available_runtimes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warps", default="64,128,224")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--proposals", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    xy = rng.uniform(0, 400, (args.crops, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(30, 200, (args.crops, 2))], 1).astype(np.float32)
    limit = matmul_gflops()
    runtimes = [r for r in ("onnxruntime", "openvino") if r in available_runtimes()]
    table = Table(title=f"R-CNN region network, {args.crops} crops of a 480x640 image, {torch.get_num_threads()} threads; "
                        f"matmul limit {limit:.0f} GFLOP/s")
    for col in ("warp", "runtime", "crops/s", "bare net crops/s", "vs eager NCHW", "GFLOP/s", "of limit",
                "max |diff|"):
        table.add_column(col, justify="right")
    summary = {}
    for warp in (int(w) for w in args.warps.split(",")):
        base = FeatureExtractor(warp_size=warp, padding=max(1, warp * 16 // 227), device="cpu", dtype="float32")
        nchw = copy.deepcopy(base.model).to(memory_format=torch.contiguous_format).eval()
        crops = warp_regions(base.prepare(image), torch.from_numpy(boxes), warp, base.padding)
        gflop = network_gflop(nchw, warp) * args.crops
        with torch.no_grad():
            reference = nchw(crops).numpy()
        rows = [("eager NCHW", lambda: nchw(crops), None)]
        rows.append(("torch channels_last", lambda: base(image, boxes), base))
        for rt in runtimes:
            fx = FeatureExtractor(warp_size=warp, padding=base.padding, device="cpu", dtype="float32", runtime=rt,
                                  cache_dir="/tmp/rcnn_bench_graphs")
            rows.append((rt, lambda fx=fx: fx(image, boxes), fx))
        t_ref = None
        for name, fn, fx in rows:
            with torch.no_grad():
                t = best_of(fn, args.repeats)
                bare = best_of(lambda: fx.network(crops), args.repeats) if fx is not None else t
                feats = fx(image, boxes) if fx is not None else reference
            t_ref = t_ref or t
            summary[(warp, name)] = t
            table.add_row(str(warp), name, f"{args.crops / t:.0f}", f"{args.crops / bare:.0f}", f"{t_ref / t:.2f}x",
                          f"{gflop / bare:.0f}", f"{gflop / bare / limit:.0%}",
                          f"{np.abs(feats - reference).max():.1e}")
    console = Console(width=150)
    console.print(table)
    fastest = min((t, name) for (w, name), t in summary.items() if w == 224) if any(w == 224 for w, _ in summary) \
        else None
    console.print(detector_table(args, runtimes))
    if fastest:
        per_image = fastest[0] / args.crops * args.proposals
        console.print(f"R-CNN test time per image at {args.proposals} proposals of 224 warps, region network in "
                      f"{fastest[1]}: {per_image:.1f} s (eager NCHW: "
                      f"{summary[(224, 'eager NCHW')] / args.crops * args.proposals:.1f} s)")


def tiny_faster(work: Path, min_size: int, max_size: int) -> Path:
    """A Faster R-CNN run trained for 2 iterations (timing does not depend on accuracy)."""
    from rcnn_cli.data.shapes import make_shapes
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.models.faster_rcnn import FasterRCNNConfig, train_faster

    data = make_shapes(work / "data", train=2, test=0, size=256, seed=0)
    out = work / f"faster_{min_size}"
    train_faster(data, "trainval", out, FasterRCNNConfig(min_size=min_size, max_size=max_size),
                 TrainConfig(epochs=1, max_iters=2, warmup_iters=1, progress=False, device="cpu"), fit=False)
    return out


def detector_table(args, runtimes: list[str]) -> Table:
    """Faster R-CNN detect ms/image per runtime of its trunk vs plain torchvision eager (NCHW)."""
    import tempfile

    from rcnn_cli.registry import load_detector
    from plain_torchvision import PlainDetector, plain_torchvision

    table = Table(title="Faster R-CNN detect, ms per image (median of 3), vs plain torchvision eager")
    for col in ("size", "runtime", "ms/image", "vs torchvision", "max box diff (px)", "max score diff"):
        table.add_column(col, justify="right")
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for min_size, max_size in ((480, 640), (600, 800)):
            run = tiny_faster(Path(tmp), min_size, max_size)
            image = Image.fromarray(rng.integers(0, 255, (max_size * 3 // 4, max_size, 3), dtype=np.uint8))
            model, cfg = plain_torchvision(run, torch.device("cpu"))
            plain = PlainDetector(model, list(cfg.classes), torch.device("cpu"))
            ref = plain(image, "x")
            t_ref = best_of(lambda: plain(image, "x"), args.repeats)
            table.add_row(f"{min_size}/{max_size}", "torchvision eager", f"{1000 * t_ref:.0f}", "1.00", "0", "0")
            for rt in ["torch"] + runtimes:
                with load_detector(run, device="cpu", runtime=rt) as det:
                    got = det(image, "x")
                    t = best_of(lambda: det(image, "x"), args.repeats)
                n = min(len(got), len(ref))
                box = np.abs(got.boxes[:n] - ref.boxes[:n]).max() if n else 0.0
                score = np.abs(got.scores[:n] - ref.scores[:n]).max() if n else 0.0
                table.add_row("", rt, f"{1000 * t:.0f}", f"{t / t_ref:.2f}", f"{box:.3f}", f"{score:.1e}")
    return table


if __name__ == "__main__":
    main()
