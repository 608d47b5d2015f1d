#!/usr/bin/env python
"""The prepared CUDA check of the Fast and Faster R-CNN issues: one run, one table.

(a) Training speed of Faster R-CNN and Fast R-CNN (EfficientNet-Lite0, offline ImageNet weights,
    600/1000 px, 2 images per iteration, the engine as `rcnn faster|fast train` runs it): iterations
    per second in FP32 and with ``--amp``; ``--iters`` iterations each, the first ``--warmup``
    excluded. Fast R-CNN trains on 2000 random proposals per image (its speed does not depend on
    where the boxes come from).
(b) Detection time per image at 600 px (the network call: resize, trunk, RPN or RoI pooling, head,
    NMS; CUDA synchronised) for VGG16 and EfficientNet-Lite0: Faster R-CNN with 300 RPN proposals
    and Fast R-CNN with 2000 given proposals, FP32 and under autocast (FP16). VGG16 is randomly
    initialised (no download here): time does not depend on the weights. The Faster R-CNN paper
    reports 198 ms per image for VGG16 on a K40; the issue's goal is <= 20 ms on an H100.

    python scripts/bench_gpu.py [--data VOC_ROOT --split trainval] [--iters 200] [--json out.json]

Without CUDA it says so and exits 0; ``--device cpu`` is a dry run (use small ``--iters``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import random_proposals, run_variant  # noqa: E402


def train_speeds(ds, data: Path, split: str, proposals: Path, args, work: Path) -> list[dict]:
    """(a): iterations/s per model, FP32 and AMP."""
    rows = []
    for kind in ("faster", "fast"):
        for amp in (False, True):
            ips = run_variant(kind, True, 2000, ds, data, split, proposals, args, work / "run",
                              device=args.device, amp=amp)
            rows.append({"model": kind, "amp": amp, "images_per_s": ips, "iterations_per_s": ips / 2})
            print(f"train {kind} amp={amp}: {ips / 2:.2f} it/s", file=sys.stderr, flush=True)
    return rows


def _time_calls(fn, inputs: list, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn(x)`` over ``inputs`` after ``warmup`` untimed calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def detect_times(ds, args, device: torch.device) -> list[dict]:
    """(b): ms per image for each backbone x model x precision."""
    import numpy as np
    from bench_features import random_proposer

    from rcnn_cli.data.images import load_image, to_tensor
    from rcnn_cli.models import faster_rcnn as fr
    from rcnn_cli.models.fast_rcnn import FastRCNNConfig, build_fast_rcnn

    pictures = [load_image(r.path) for r in ds.records[: args.images]]  # decoded once
    images = [to_tensor(p).to(device) for p in pictures]
    propose = random_proposer(2000)
    props = [torch.from_numpy(np.asarray(propose(p))).to(device) for p in pictures]
    rows = []
    for backbone in args.backbones.split(","):
        weights = "imagenet" if backbone == "efficientnet_lite0" else "none"
        faster = fr.build_model(fr.default_config(list(ds.classes), backbone, min_size=600, max_size=1000),
                                weights=weights).to(device).eval()
        fast = build_fast_rcnn(FastRCNNConfig(backbone=backbone, classes=list(ds.classes), min_size=600,
                                              max_size=1000), weights=weights).to(device).eval()
        calls = {"faster (300 RPN proposals)": lambda i: faster([images[i]]),
                 "fast (2000 proposals)": lambda i: fast([images[i]], proposals=[props[i]])}
        for name, call in calls.items():
            for amp in (False, True):
                def fn(i, call=call, amp=amp):
                    with torch.inference_mode(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                        return call(i)

                s = _time_calls(fn, list(range(len(images))), args.warmup_calls, device)
                rows.append({"backbone": backbone, "model": name, "amp": amp, "ms_per_image": 1000 * s})
                print(f"detect {backbone} {name} amp={amp}: {1000 * s:.1f} ms", file=sys.stderr, flush=True)
        del faster, fast
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="VOC root (default: generated shapes images of 600 px)")
    p.add_argument("--split", default="trainval")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    p.add_argument("--iters", type=int, default=200, help="training iterations per variant")
    p.add_argument("--warmup", type=int, default=20, help="training iterations excluded from the speed")
    p.add_argument("--images", type=int, default=20, help="timed detection images")
    p.add_argument("--warmup-calls", type=int, default=3, help="untimed detection calls")
    p.add_argument("--backbones", default="vgg16,efficientnet_lite0")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the GPU check was not run (use --device cpu for a dry run)")
        return {}
    if args.iters <= args.warmup:
        p.error("--iters must exceed --warmup")
    args.min_size, args.max_size = 600, 1000  # run_variant's image sizes
    device = torch.device(args.device)
    logging.disable(logging.WARNING)

    from rcnn_cli.data.inputs import load_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        data = args.data
        if data is None:
            from rcnn_cli.data.shapes import make_shapes

            data = make_shapes(work / "shapes", train=max(args.images, 8), test=2, size=600, seed=0)
        ds = load_dataset(data, args.split)
        proposals = random_proposals(ds, 2000, work / "proposals.h5")
        report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "data": str(args.data) if args.data else "generated shapes, 600x600 px",
                  "train": train_speeds(ds, data, args.split, proposals, args, work),
                  "detect": detect_times(ds, args, device)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{report['device']}, torch {report['torch']}, {report['data']}\n")
    print("| training (EfficientNet-Lite0, 600/1000 px, batch 2) | FP32 it/s | AMP it/s | AMP speedup |")
    print("|---|---:|---:|---:|")
    for kind in ("faster", "fast"):
        fp32, amp = (next(r for r in report["train"] if r["model"] == kind and r["amp"] == a)["iterations_per_s"]
                     for a in (False, True))
        print(f"| {kind} R-CNN | {fp32:.2f} | {amp:.2f} | {amp / fp32:.2f}x |")
    print("\n| detection at 600 px | backbone | FP32 ms/image | AMP ms/image |")
    print("|---|---|---:|---:|")
    for backbone in args.backbones.split(","):
        for model in ("faster (300 RPN proposals)", "fast (2000 proposals)"):
            ms = [next(r for r in report["detect"] if r["backbone"] == backbone and r["model"] == model
                       and r["amp"] == a)["ms_per_image"] for a in (False, True)]
            print(f"| {model} | {backbone} | {ms[0]:.1f} | {ms[1]:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
