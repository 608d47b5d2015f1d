#!/usr/bin/env python
"""Benchmark `rcnn extract-features`: throughput against the bare backbone, and peak memory.

1. Crops per second of :func:`rcnn_cli.rcnn.features.run_extract_features` (decode with prefetch, warp
   with roi_align, forward, HDF5 writes, final file) on ``--images`` images against the bare
   backbone forward on pre-warped random tensors of the same batch size and crop count
   (goal: ratio >= 0.85). The extractor is built once and shared, so model loading is excluded
   from both.
2. Peak RSS (``ru_maxrss``) of a fresh process extracting ``--rss-small`` versus ``--rss-large``
   images (goal: flat, memory independent of dataset size).

Proposals are random boxes (``--proposals`` per image, seeded per image, sides 20-300 px): the
speed of the feature stage does not depend on where the boxes come from.

    python scripts/bench_features.py [--data ../shared/datasets/bccd --split trainval]
        [--backbone efficientnet_lite0 --warp-size 128 --batch-size 64 --proposals 100]
        [--images 12 --rss-small 50 --rss-large 200 --rss-proposals 20 --threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "bccd"


def random_proposer(n: int):
    def propose(image) -> np.ndarray:
        w, h = image.size
        arr = np.asarray(image.resize((8, 8)))
        rng = np.random.default_rng(int(arr.sum()) + 7919 * w + h)
        side = rng.uniform(20, min(300, max(21, min(w, h))), size=(n, 2))
        xy = rng.uniform(0, 1, size=(n, 2)) * np.maximum([w, h] - side, 1)
        return np.concatenate([xy, np.minimum(xy + side, [w, h])], 1).astype(np.float32)

    return propose


def make_proposals(data: Path, split: str, count: int, per_image: int, out: Path):
    from rcnn_cli.data.inputs import ImageInput, load_dataset
    from rcnn_cli.proposals import ProposalConfig, run_propose

    ds = load_dataset(data, split)
    ds.records = ds.records[:count]
    run_propose([ImageInput(r.image_id, r.path) for r in ds.records], out, proposer=random_proposer(per_image),
                config=ProposalConfig(method="random", min_size=0), progress=False, attrs={"method": "random"})
    return ds


def child_rss(args: argparse.Namespace) -> None:
    """In a fresh process: extract ``args.child`` images, print peak RSS (MiB) as JSON."""
    import torch

    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.rcnn.features import FeatureConfig, run_extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.data, args.split)
    ds.records = ds.records[:args.child]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        config = FeatureConfig(backbone=args.backbone, warp_size=args.warp_size, batch_size=args.batch_size,
                               max_proposals=args.rss_proposals)
        s = run_extract_features(ds, args.props_file, Path(tmp) / "f.h5", config, progress=False)
        seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": s["extracted"], "regions": s["regions"], "rss_mib": rss, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="trainval")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--warp-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rss-small", type=int, default=50)
    ap.add_argument("--rss-large", type=int, default=200, help="0: skip the memory measurement")
    ap.add_argument("--rss-proposals", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--props-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_rss(args)
        return

    import torch

    from rcnn_cli.rcnn.features import FeatureConfig, FeatureExtractor, run_extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.exists():
        sys.exit(f"{args.data}: dataset not found (pass --data)")
    n_props = max(args.images, args.rss_large)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        props = tmp / "props.h5"
        ds = make_proposals(args.data, args.split, n_props, args.proposals, props)
        fx = FeatureExtractor(args.backbone, warp_size=args.warp_size, batch_size=args.batch_size, device="auto")

        # ---- throughput: the bare backbone on pre-warped tensors (same batch size and crop count),
        # measured before and after the stage and averaged (the machine may be shared)
        def bare(crops: int) -> float:
            x = torch.randn(args.batch_size, 3, fx.warp_size, fx.warp_size, device=fx.device)
            with torch.inference_mode(), fx._autocast():
                fx.model(x)
                if fx.device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                done = 0
                while done < crops:
                    b = min(args.batch_size, crops - done)
                    fx.model(x[:b]).float().cpu()
                    done += b
                return time.perf_counter() - t

        # ---- throughput: the whole stage
        bench_ds = type(ds)(ds.root, ds.split, ds.classes, ds.records[:args.images], ds.format)
        run_extract_features(type(ds)(ds.root, ds.split, ds.classes, ds.records[:1], ds.format), props,
                             tmp / "warm.h5", FeatureConfig(max_proposals=args.proposals), extractor=fx,
                             progress=False)  # warm-up
        from rcnn_cli.proposals import load as load_proposals

        with load_proposals(props) as pr:
            expected = sum(min(len(pr.boxes(r.image_id)), args.proposals) + len(r.boxes) for r in bench_ds.records)
        bare_before = bare(expected)
        t = time.perf_counter()
        s = run_extract_features(bench_ds, props, tmp / "bench.h5", FeatureConfig(max_proposals=args.proposals),
                                 extractor=fx, progress=False)
        stage_seconds = time.perf_counter() - t
        crops = s["regions"]
        stage_rate = crops / stage_seconds
        bare_after = bare(crops)
        bare_rate = 2 * crops / (bare_before * crops / expected + bare_after)

        # ---- peak RSS in fresh processes
        rss = {}
        for count in ((args.rss_small, args.rss_large) if args.rss_large else ()):
            cmd = [sys.executable, __file__, "--child", str(count), "--props-file", str(props), "--data", str(args.data),
                   "--split", args.split, "--backbone", args.backbone, "--warp-size", str(args.warp_size),
                   "--batch-size", str(args.batch_size), "--rss-proposals", str(args.rss_proposals),
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rss[count] = json.loads(res.stdout.strip().splitlines()[-1])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"extract-features benchmark ({args.backbone}, warp {fx.warp_size}, batch {args.batch_size}, "
                        f"{fx.device}, {torch.get_num_threads()} thread(s))")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row(f"extract-features crops/s ({args.images} images, {crops} crops)", f"{stage_rate:.1f}", "")
    table.add_row("bare backbone crops/s (pre-warped, same batch size; mean of before/after)", f"{bare_rate:.1f}", "")
    table.add_row("ratio", f"{stage_rate / bare_rate:.3f}", ">= 0.85")
    for count, r in rss.items():
        table.add_row(f"peak RSS, {r['images']} images x {args.rss_proposals} proposals ({r['regions']} crops, "
                      f"{r['seconds']:.0f} s)", f"{r['rss_mib']:.0f} MiB", "")
    if rss:
        a, b = rss[args.rss_small]["rss_mib"], rss[args.rss_large]["rss_mib"]
        table.add_row(f"RSS growth {args.rss_small} -> {args.rss_large} images", f"{b - a:+.0f} MiB ({b / a - 1:+.1%})", "flat")
    Console().print(table)


if __name__ == "__main__":
    main()
