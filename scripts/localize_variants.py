#!/usr/bin/env python
"""Classification + localization by regression: the lecture's variants side by side, one table.

Trains ``rcnn localize`` with every combination of ``--boxes agnostic|specific``, ``--attach
fc|conv`` and head-only vs fine-tuned (same data, seed and schedule), detects the test split and
prints the ILSVRC localization metric for each: top-1 / top-5 localization error, top-1
classification error and the error with the class known (fractions in %).

    python scripts/localize_variants.py [--data ../shared/datasets/raccoon --train train --test test]
        [--epochs 20 --finetune-epochs 10 --out runs/localize_variants --json table.json]

Without ``--data`` it makes the built-in single-object shapes (``rcnn data make-shapes --single``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variant(data: Path, args, out: Path, boxes: str, attach: str, head_only: bool) -> dict:
    """Train one variant, detect the test split, and its localization errors."""
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.registry import load_detector
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.inference import detect_dataset
    from rcnn_cli.models.localizer import TRAIN_DEFAULTS, LocalizerConfig, train_localizer

    epochs = args.epochs if head_only else args.finetune_epochs
    cfg = TrainConfig(**dict(TRAIN_DEFAULTS, epochs=epochs), seed=args.seed, progress=False, device="cpu")
    t0 = time.perf_counter()
    train_localizer(data, args.train, out, LocalizerConfig(boxes=boxes, attach=attach, head_only=head_only), cfg,
                    resume=True)
    seconds = time.perf_counter() - t0
    det = load_detector(out, device="cpu")
    test = load_dataset(data, args.test, classes=det.classes)
    dets = detect_dataset(det, test, det.classes)
    r = evaluate(test, dets, metric="loc")
    return {"boxes": boxes, "attach": attach, "training": "head only" if head_only else "fine-tuned",
            "epochs": epochs, "train_s": round(seconds, 1), **{k: r[k] for k in r if k.endswith("_error")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path)
    p.add_argument("--train", default="trainval")
    p.add_argument("--test", default="test")
    p.add_argument("--epochs", type=int, default=20, help="head-only epochs")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "localize_variants")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.getLogger("rcnn").setLevel(logging.WARNING)
    data = args.data
    if data is None:
        from rcnn_cli.data.shapes import make_shapes

        data = make_shapes(args.out / "data", train=200, test=50, size=256, seed=args.seed, single=True)
    rows = []
    for head_only, attach, boxes in itertools.product((True, False), ("fc", "conv"), ("agnostic", "specific")):
        name = f"{'head' if head_only else 'tune'}_{attach}_{boxes}"
        rows.append(variant(data, args, args.out / name, boxes, attach, head_only))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nlocalization on {data} ({args.train} -> {args.test}); errors in %")
    print("| boxes | attach | training | epochs | train s | top-1 loc | top-5 loc | top-1 cls | GT known loc |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['boxes']} | {r['attach']} | {r['training']} | {r['epochs']} | {r['train_s']:.0f} | "
              f"{100 * r['top1_loc_error']:.1f} | {100 * r['top5_loc_error']:.1f} | "
              f"{100 * r['top1_cls_error']:.1f} | {100 * r['gt_known_loc_error']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
