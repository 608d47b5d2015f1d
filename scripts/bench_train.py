#!/usr/bin/env python
"""Benchmark training speed of Faster and Fast R-CNN: the engine's settings side by side.

Images per second of :func:`rcnn_cli.engine.train` (forward, backward and SGD step; data loading
in the main process) for:

* Faster R-CNN with the paper's RPN top-N before NMS in training (12000) and weights in the
  default contiguous (NCHW) layout: the baseline;
* the same in ``channels_last`` (NHWC) layout, the engine's default;
* ``channels_last`` with torchvision's 2000 boxes before the proposal NMS (``--rpn-pre-nms-train``);
* Fast R-CNN, contiguous and ``channels_last`` (random proposals: its speed does not depend on
  where the boxes come from);
* both with ``torch.compile`` of the training forward (``TrainConfig.compile``; the first
  ``--warmup`` iterations, which include the compilation, are excluded).
* issue 34's levers against the engine's defaults (variant 3): the EfficientNet-Lite0 pyramid, the
  Lite1 and Lite2 trunks, mosaics, hue and colour jitter (``--only 3,8,9,10,11,12``).

Each variant trains ``--iters`` iterations of 2 images; the first ``--warmup`` are excluded (the
engine logs images/s per window of ``--warmup`` iterations). Variants are interleaved over
``--repeats`` rounds and the best round is kept, so a slow moment of the machine does not decide.

    python scripts/bench_train.py [--data ../shared/datasets/bccd --split trainval]
        [--min-size 480 --max-size 640 --iters 30 --warmup 10 --repeats 2 --proposals 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "bccd"

VARIANTS = [  # (name, model, channels_last, RPN pre-NMS top-N in training, torch.compile[, model settings])
    ("faster, NCHW, pre-NMS 12000", "faster", False, 12000, False),
    ("faster, channels_last, pre-NMS 12000", "faster", True, 12000, False),
    ("faster, channels_last, pre-NMS 2000", "faster", True, 2000, False),
    ("faster, channels_last, pre-NMS 2000, compile", "faster", True, 2000, True),
    ("fast, NCHW", "fast", False, None, False),
    ("fast, channels_last", "fast", True, None, False),
    ("fast, channels_last, compile", "fast", True, None, True),
    # issue 34's levers, each against variant 3 (the engine's defaults): run with --only 3,8,9,10,11,12
    ("faster, Lite0 pyramid P3-P6 (--fpn)", "faster", True, 2000, False,
     {"fpn": True, "anchor_sizes": [32.0, 64.0, 128.0, 256.0]}),
    ("faster, EfficientNet-Lite1", "faster", True, 2000, False, {"backbone": "efficientnet_lite1"}),
    ("faster, EfficientNet-Lite2", "faster", True, 2000, False, {"backbone": "efficientnet_lite2"}),
    ("faster, --mosaic 0.5", "faster", True, 2000, False, {"mosaic": 0.5}),
    ("faster, --hue-jitter 0.015 --color-jitter 0.3", "faster", True, 2000, False,
     {"hue_jitter": 0.015, "color_jitter": 0.3}),
]


def random_proposals(ds, per_image: int, out: Path) -> Path:
    """A proposals file of ``per_image`` random boxes for every image of ``ds`` (bench_features' proposer)."""
    from bench_features import random_proposer  # scripts/ is on sys.path when this file runs as a script

    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.proposals import ProposalConfig, run_propose

    run_propose([ImageInput(r.image_id, r.path) for r in ds.records], out, proposer=random_proposer(per_image),
                config=ProposalConfig(method="random", min_size=0), progress=False, attrs={"method": "random"})
    return out


def steady_images_per_s(run_dir: Path, warmup: int) -> float:
    """Mean images/s of the logged windows after the first ``warmup`` iterations."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if r["type"] == "iter" and r["iteration"] > warmup]
    return float(np.mean(rates)) if rates else float("nan")


def run_variant(kind: str, channels_last: bool, pre_nms: int | None, ds, data: Path, split: str, proposals: Path,
                args, out: Path, compile: bool = False, model_settings: dict | None = None, **train_options) -> float:
    """Train ``args.iters`` iterations of one variant into ``out``; steady images/s. ``model_settings``
    go to Faster R-CNN's configuration, ``train_options`` to :class:`rcnn_cli.engine.TrainConfig` (e.g.
    ``device``, ``amp``)."""
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.models.fast_rcnn import FastRCNNConfig, train_fast_rcnn
    from rcnn_cli.models.faster_rcnn import FasterRCNNConfig, train_faster

    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(epochs=1000, max_iters=args.iters, warmup_iters=5, log_every=args.warmup, progress=False,
                      channels_last=channels_last, seed=0, compile=compile, **train_options)
    if kind == "faster":
        settings = {"anchor_sizes": [32.0, 96.0, 256.0], **(model_settings or {})}
        model = FasterRCNNConfig(min_size=args.min_size, max_size=args.max_size, rpn_pre_nms_top_n_train=pre_nms,
                                 **settings)
        train_faster(data, split, out, model, cfg, fit=False)
    else:
        model_cfg = FastRCNNConfig(classes=list(ds.classes), min_size=args.min_size, max_size=args.max_size)
        train_fast_rcnn(ds, out, cfg, model_cfg, proposals)
    return steady_images_per_s(out, args.warmup)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="VOC root (default: ../shared/datasets/bccd, else generated shapes)")
    p.add_argument("--split", default="trainval")
    p.add_argument("--min-size", type=int, default=480)
    p.add_argument("--max-size", type=int, default=640)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--proposals", type=int, default=300, help="random proposals per image for Fast R-CNN")
    p.add_argument("--only", help=f"comma-separated variant numbers (1-{len(VARIANTS)}) to run")
    args = p.parse_args(argv)
    if args.iters <= args.warmup:
        p.error("--iters must exceed --warmup")
    logging.disable(logging.WARNING)

    from rcnn_cli.data.inputs import load_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        data = args.data or DEFAULT_DATA
        if args.data is None and not DEFAULT_DATA.is_dir():
            from rcnn_cli.data.shapes import make_shapes

            data = make_shapes(work / "shapes", train=40, test=2, size=max(args.min_size, 256), seed=0)
        ds = load_dataset(data, args.split)
        proposals = random_proposals(ds, args.proposals, work / "proposals.h5")
        chosen = [VARIANTS[int(i) - 1] for i in args.only.split(",")] if args.only else VARIANTS
        best: dict[str, float] = {}
        for rnd in range(args.repeats):
            for name, kind, cl, pre, comp, *settings in chosen:
                ips = run_variant(kind, cl, pre, ds, data, args.split, proposals, args, work / "run", compile=comp,
                                  model_settings=settings[0] if settings else None)
                best[name] = max(best.get(name, 0.0), ips)
                print(f"round {rnd + 1}: {name}: {ips:.3f} images/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    print(f"\ntraining speed, {data} {args.split}, images {args.min_size}/{args.max_size} px, batch 2, "
          f"iterations {args.warmup + 1}-{args.iters}, best of {args.repeats}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"| {'variant':40s} | images/s | ratio to the model's first row |")
    print(f"|{'-' * 42}|---------:|-------------------------------:|")
    first: dict[str, float] = {}
    for name, kind, *_ in chosen:
        first.setdefault(kind, best[name])
        print(f"| {name:40s} | {best[name]:8.3f} | {best[name] / first[kind]:30.3f} |")
    return best


if __name__ == "__main__":
    main()
