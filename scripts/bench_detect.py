#!/usr/bin/env python
"""Benchmark test time per image: R-CNN vs Fast R-CNN vs Faster R-CNN, and our Faster R-CNN vs plain torchvision.

One run, the same decoded images, the same backbone and the same proposals for R-CNN and Fast
R-CNN; every number comes from :func:`rcnn_cli.workflows.compare.time_detector` (the function `rcnn compare`
uses: warm-up excluded, median over images, stages recorded separately).

(a) R-CNN (:class:`~rcnn_cli.rcnn.RCNNDetector`), Fast R-CNN (:class:`~rcnn_cli.models.fast_rcnn.FastRCNNDetector`)
    and Faster R-CNN (:class:`~rcnn_cli.models.faster_rcnn.FasterRCNNDetector`): time per image
    without proposals (network + post-processing) and with them (selective search computed live,
    the same settings for R-CNN and Fast R-CNN), and the ratios to R-CNN. Goals (issues 5, 6): Fast
    >= 100x without and >= 25x with proposals at R-CNN's full count of 2000 proposals with
    EfficientNet-Lite0; Faster >= 250x with proposals.
(b) Our ``FasterRCNNDetector`` against a plain ``torchvision.models.detection.FasterRCNN`` built here
    from the same trunk, anchors, sizes and thresholds, loaded with the same state dict; same
    images: the ratio of median times (goal <= 1.1) and the largest box difference (should be 0).

Models: existing run directories (``--rcnn-model``, ``--fast-model``, ``--faster-model``; or
``--from-compare OUT`` for everything `rcnn compare` made, with its timing images and settings), or
tiny ones trained here in seconds on generated shapes data (timing does not depend on accuracy).

Proposal count: the built-in shapes images are simple, so selective search finds only ~100-300
boxes on them; ``--proposals-count N`` (2000 by default for models trained here) tops each list up
to N with jittered copies of its own boxes (deterministic, microseconds), so the networks are timed
at R-CNN's full count. The selective-search time reported is that of the real search.
``--proposals FILE`` makes R-CNN and Fast R-CNN read the boxes of the timed images from a proposals
file instead; the selective-search time is then measured separately with the file's settings.

    python scripts/bench_detect.py [--images 3] [--proposals-count 2000] [--warp-size 224]
        [--min-size 600 --max-size 1000] [--backbone efficientnet_lite0] [--weights imagenet]
        [--data VOC_ROOT --split test] [--rcnn-model DIR --fast-model DIR --faster-model DIR]
        [--proposals FILE] [--from-compare OUT] [--work DIR] [--threads N] [--device auto] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rcnn_cli.registry import METHODS as REGISTRY
from plain_torchvision import PlainDetector, plain_torchvision
from rcnn_cli.workflows.timing import (make_detector, speedups, threads_info,
                                       time_detector)
from rcnn_cli.log import console, setup_logging

GOALS = {("fast", "without_proposals"): 100.0, ("fast", "with_proposals"): 25.0, ("faster", "with_proposals"): 250.0}
PLAIN_GOAL = 1.1


# ------------------------------------------------------------------------------------- helpers

def top_up(boxes: np.ndarray, n: int | None, width: int, height: int) -> np.ndarray:
    """``boxes`` extended to ``n`` rows with jittered copies of themselves (deterministic, clipped)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not n or len(boxes) >= n or len(boxes) == 0:
        return boxes[:n] if n else boxes
    rng = np.random.default_rng(len(boxes))
    extra = boxes[rng.integers(0, len(boxes), n - len(boxes))].copy()
    wh = np.maximum(extra[:, 2:] - extra[:, :2], 1.0)
    extra += rng.uniform(-0.15, 0.15, size=extra.shape).astype(np.float32) * np.concatenate([wh, wh], 1)
    extra[:, [0, 2]] = np.clip(extra[:, [0, 2]], 0, width)
    extra[:, [1, 3]] = np.clip(extra[:, [1, 3]], 0, height)
    extra[:, 2:] = np.maximum(extra[:, 2:], extra[:, :2] + 1)
    return np.concatenate([boxes, extra])


def topped_up(kind: str, run_dir: Path, device: str, count: int | None, reader: Any = None):
    """The R-CNN or Fast R-CNN detector of ``run_dir`` with ``count`` proposals per image: live
    selective search (or ``reader``'s boxes) topped up to ``count`` (a subclass; nothing is patched)."""
    from rcnn_cli.models.fast_rcnn import FastRCNNDetector
    from rcnn_cli.rcnn.model import RCNNDetector

    class ToppedUp(RCNNDetector if kind == "rcnn" else FastRCNNDetector):
        def propose(self, image, image_id):
            if reader is not None:
                boxes = np.asarray(reader.boxes(image_id), np.float32)
            else:
                boxes = super().propose(image, image_id)
            return top_up(boxes, count, *image.size)

    if kind == "rcnn":
        detector = ToppedUp.from_run(run_dir, device=device)
        if count:
            detector.proposal_settings["limit"] = None  # the search itself is not cut; top_up caps
        return detector
    return ToppedUp.from_run(run_dir, device=device, max_proposals=count)


class SelectiveSearchOnly:
    """A "detector" that only runs selective search (to time it on its own)."""

    def __init__(self, settings: dict):
        self.settings = {k: settings[k] for k in ("mode", "max_size", "min_size") if settings.get(k) is not None}
        self.device = "cpu"

    def __call__(self, image, image_id):
        from rcnn_cli.boxes import ImageDetections
        from rcnn_cli.proposals import selective_search

        t0 = time.perf_counter()
        selective_search(image, **self.settings)
        return ImageDetections(image_id, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [],
                               timings={"proposals": time.perf_counter() - t0})


# ---------------------------------------------------------------------------------- tiny models

def train_tiny(args, data: Path, work: Path) -> dict[str, Path]:
    """Tiny R-CNN / Fast / Faster models on ``data`` (trainval), seconds each: only timing matters."""
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.rcnn.pipeline import PipelineConfig, run_pipeline

    out: dict[str, Path] = {}
    t0 = time.perf_counter()
    need_props = not args.rcnn_model or not args.fast_model
    if need_props:
        console.print("training tiny models (timing does not depend on accuracy)...", highlight=False)
        cfg = PipelineConfig(dataset=str(data), train_split="trainval", test_split=args.split, mode=args.ss_mode,
                             max_size=args.ss_max_size, min_size=args.ss_min_size, limit=20, workers=1,
                             backbone=args.backbone, weights=args.weights, warp_size=args.warp_size,
                             padding=args.padding, device=args.device, fit=False)
        run_pipeline(cfg, work / "rcnn", progress=False)
        out["rcnn"] = work / "rcnn" / "model"
        out["proposals_train"] = work / "rcnn" / "proposals_trainval.h5"
    tc = dict(epochs=1, max_iters=4, warmup_iters=1, batch_size=2, device=args.device, progress=False, seed=0)
    if not args.fast_model:
        from rcnn_cli.models.fast_rcnn import FastRCNNConfig, train_fast_rcnn

        ds = load_dataset(data, "trainval")
        mc = FastRCNNConfig(backbone=args.backbone, classes=list(ds.classes), min_size=args.min_size,
                            max_size=args.max_size, max_proposals=int(args.proposals_count or 2000))
        train_fast_rcnn(ds, work / "fast", TrainConfig(**tc), mc, out["proposals_train"], weights=args.weights)
        out["fast"] = work / "fast"
    if not args.faster_model:
        from rcnn_cli.models.faster_rcnn import FasterRCNNConfig, train_faster

        model = FasterRCNNConfig(backbone=args.backbone, weights=args.weights, min_size=args.min_size,
                                 max_size=args.max_size, rpn_post_nms_top_n_test=args.rpn_top_n)
        train_faster(data, "trainval", work / "faster", model, TrainConfig(**tc), fit=False)
        out["faster"] = work / "faster"
    console.print(f"tiny models ready in {time.perf_counter() - t0:.0f} s ({work})", highlight=False)
    return out


# ------------------------------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="VOC root with trainval/test splits (default: generated shapes data)")
    p.add_argument("--split", default="test", help="split of the timed images")
    p.add_argument("--images", type=int, default=3, help="timed images")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls")
    p.add_argument("--repeats", type=int, default=1, help="runs per image (median)")
    p.add_argument("--pair-rounds", type=int, default=2, help="alternating rounds of ours vs plain torchvision (best median kept)")
    p.add_argument("--image-size", type=int, default=500, help="side of the generated shapes images")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="imagenet | none (tiny models)")
    p.add_argument("--proposals-count", type=int, default=None,
                   help="proposals per image for R-CNN and Fast R-CNN, topped up (default: 2000 for tiny models, else the models' own)")
    p.add_argument("--ss-mode", default="fast")
    p.add_argument("--ss-max-size", type=int, default=500)
    p.add_argument("--ss-min-size", type=int, default=20)
    p.add_argument("--warp-size", type=int, default=224, help="R-CNN warp (tiny models)")
    p.add_argument("--padding", type=int, default=16, help="R-CNN context padding (tiny models)")
    p.add_argument("--min-size", type=int, default=600, help="Fast/Faster shorter side (tiny models)")
    p.add_argument("--max-size", type=int, default=1000, help="Fast/Faster longer side at most (tiny models)")
    p.add_argument("--rpn-top-n", type=int, default=300, help="RPN proposals at test (tiny Faster model)")
    p.add_argument("--rcnn-model", type=Path)
    p.add_argument("--fast-model", type=Path)
    p.add_argument("--faster-model", type=Path)
    p.add_argument("--proposals", type=Path, help="proposals file with the timed images (R-CNN and Fast R-CNN read it)")
    p.add_argument("--from-compare", type=Path, help="an `rcnn compare` folder: its models, data, timing images and settings")
    p.add_argument("--work", type=Path, help="folder for generated data and tiny models (default: a temporary one)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-plain", action="store_true", help="skip (b), ours vs plain torchvision")
    p.add_argument("--skip-runtime", action="store_true", help="skip (d), rcnn detect's default runtime vs torch")
    p.add_argument("--json", type=Path, help="write all results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    from rcnn_cli.workflows.timing import load_timing_images
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.device import resolve_device

    device = resolve_device(args.device)
    tmp = None
    image_ids = None
    if args.from_compare:
        rep = json.loads((args.from_compare / "compare.json").read_text())
        args.data = Path(rep["dataset"])
        args.split = rep["test_split"]
        args.rcnn_model = args.rcnn_model or args.from_compare / "rcnn" / "model"
        args.fast_model = args.fast_model or args.from_compare / "fast"
        args.faster_model = args.faster_model or args.from_compare / "faster"
        image_ids = rep["timing"]["image_ids"]
        args.images, args.warmup, args.repeats = len(image_ids), rep["timing"]["warmup"], rep["timing"]["repeats"]
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_detect_")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        from rcnn_cli.data.shapes import make_shapes

        args.data = work / "data"
        if not (args.data / "ImageSets" / "Main" / "test.txt").is_file():
            make_shapes(args.data, train=4, test=max(args.images, 1), size=args.image_size, seed=0)
    trained_here = not (args.rcnn_model and args.fast_model and args.faster_model)
    if args.proposals_count is None and trained_here:
        args.proposals_count = 2000
    models = train_tiny(args, args.data, work) if trained_here else {}
    rcnn_dir = args.rcnn_model or models["rcnn"]
    fast_dir = args.fast_model or models["fast"]
    faster_dir = args.faster_model or models["faster"]

    test = load_dataset(args.data, args.split)
    if image_ids is not None:
        wanted = set(image_ids)
        test.records = [r for r in test.records if r.image_id in wanted]
    images = load_timing_images(test, args.images)
    reader = None
    if args.proposals:
        from rcnn_cli.proposals import load as load_proposals

        reader = load_proposals(args.proposals)
        missing = [i for i, _ in images if i not in reader]
        if missing:
            sys.exit(f"--proposals {args.proposals}: no boxes for {missing[0]}")

    kw = dict(warmup=args.warmup, repeats=args.repeats)
    results: dict[str, Any] = {}
    console.print(f"timing {len(images)} images (+{args.warmup} warm-up) on {device}, "
                  f"{torch.get_num_threads()} torch threads", highlight=False)

    rcnn = topped_up("rcnn", rcnn_dir, str(device), args.proposals_count, reader)
    ss_settings = dict(rcnn.proposal_settings)
    results["rcnn"] = time_detector(rcnn, images, **kw)
    rcnn_input = f"warp {rcnn.model.config['warp_size']}+{rcnn.model.config['padding']}"
    del rcnn

    fast = topped_up("fast", fast_dir, str(device), args.proposals_count, reader)
    results["fast"] = time_detector(fast, images, **kw)
    fast_input = f"{fast.model.config.min_size}/{fast.model.config.max_size} px"
    fast.close()
    del fast

    ours = make_detector(faster_dir, str(device))
    faster_input = f"{ours.model_config.min_size}/{ours.model_config.max_size} px"
    results["faster"] = time_detector(ours, images, **kw)

    if reader is not None:  # the networks read the file: time the search on its own, add it
        ss = time_detector(SelectiveSearchOnly({**ss_settings, **{k: reader.attrs.get(k) for k in ("mode", "max_size", "min_size")}}),
                           images, **kw)
        results["selective_search"] = ss
        for m in ("rcnn", "fast"):
            med = results[m]["median"]
            med["proposals_file"] = med["proposals"]
            med["proposals"] = ss["median"]["proposals"]
            med["total"] = med["without_proposals"] + ss["median"]["proposals"]
        reader.close()

    rows = {}
    for m, inp in (("rcnn", rcnn_input), ("fast", fast_input), ("faster", faster_input)):
        med = results[m]["median"]
        rows[m] = {"without_proposals": med["without_proposals"], "with_proposals": med["total"],
                   "proposals": med["proposals"], "proposals_per_image": results[m]["proposals_per_image"], "input": inp}
    for key in ("without_proposals", "with_proposals"):
        sp = speedups({m: rows[m][key] for m in rows})
        for m in rows:
            rows[m][f"speedup_{key}"] = sp[m]

    plain = None
    if not args.skip_plain:
        model, cfg = plain_torchvision(faster_dir, device)
        if model is None:
            console.print("(b) skipped: the Faster R-CNN model has an FPN or a backbone head", highlight=False)
        else:
            pd = PlainDetector(model, list(cfg.classes), device)
            diffs = []
            for image_id, image in images:
                a, b = ours(image, image_id), pd(image, image_id)
                same = len(a.boxes) == len(b.boxes)
                diffs.append(float(np.abs(a.boxes - b.boxes).max()) if same and len(a.boxes) else (0.0 if same else float("inf")))
            ours_t, plain_t = [], []
            for _ in range(max(1, args.pair_rounds)):
                ours_t.append(time_detector(ours, images, **kw)["median"]["total"])
                plain_t.append(time_detector(pd, images, **kw)["median"]["total"])
            plain = {"ours": min(ours_t), "plain": min(plain_t), "ratio": min(ours_t) / min(plain_t),
                     "ours_rounds": ours_t, "plain_rounds": plain_t, "max_box_difference": max(diffs)}

    default_runtime = None
    if not args.skip_runtime:
        default_runtime = time_default_runtime(faster_dir, str(device), images, kw, args.pair_rounds)

    agreement = None
    if args.from_compare:
        agreement = {}
        for m in rows:
            theirs = rep["results"].get(m, {}).get("test_seconds_per_image")
            if not theirs:
                continue
            agreement[m] = {k: {"compare": theirs[k], "bench": rows[m][k], "ratio": rows[m][k] / theirs[k]}
                            for k in ("without_proposals", "with_proposals") if theirs.get(k)}

    report = {"device": str(device), "threads": threads_info(), "images": [i for i, _ in images],
              "warmup": args.warmup, "repeats": args.repeats, "proposals_count": args.proposals_count,
              "models": {"rcnn": str(rcnn_dir), "fast": str(fast_dir), "faster": str(faster_dir)},
              "data": str(args.data), "rows": rows, "plain_torchvision": plain, "timings": results,
              "default_runtime": default_runtime,
              "agreement_with_compare": agreement, "compare": str(args.from_compare) if args.from_compare else None,
              "goals": {f"{m} {k}": g for (m, k), g in GOALS.items()} | {"ours/plain": PLAIN_GOAL}}
    print_report(report)
    if args.json:
        from rcnn_cli.io import write_json

        write_json(args.json, report)
        console.print(f"written: {args.json}", highlight=False)
    if tmp is not None:
        tmp.cleanup()
    return report


def time_default_runtime(faster_dir: Path, device: str, images, kw: dict, rounds: int) -> dict | None:
    """(d) `rcnn detect`'s default ``--runtime auto`` against ``--runtime torch`` on one Faster R-CNN
    run: median total per image (best of ``rounds`` alternating rounds), their ratio, the largest
    box difference."""
    from rcnn_cli.backends import resolve_runtime

    runtime = resolve_runtime("auto", torch.device(device).type if device != "auto" else "cpu")
    if runtime == "torch":
        console.print("(d) skipped: auto resolves to torch here (no OpenVINO / ONNX Runtime, or a GPU)")
        return None
    dets = {name: make_detector(faster_dir, device, runtime=name) for name in ("torch", "auto")}
    diffs = []
    for image_id, image in images:
        a, b = dets["torch"](image, image_id), dets["auto"](image, image_id)
        same = len(a.boxes) == len(b.boxes) and a.labels == b.labels
        diffs.append(float(np.abs(a.boxes - b.boxes).max()) if same and len(a.boxes) else (0.0 if same else float("inf")))
    times: dict[str, list[float]] = {"torch": [], "auto": []}
    for _ in range(max(1, rounds)):
        for name, det in dets.items():
            times[name].append(time_detector(det, images, **kw)["median"]["total"])
    best = {k: min(v) for k, v in times.items()}
    return {"runtime": runtime, "torch": best["torch"], "auto": best["auto"], "ratio": best["auto"] / best["torch"],
            "rounds": times, "max_box_difference": max(diffs)}


def _fmt(s: float | None) -> str:
    from rcnn_cli.workflows.report import fmt_seconds as _fmt_seconds

    return _fmt_seconds(s)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from rcnn_cli.workflows.report import fmt_x as _fmt_x

    out = console if console.is_terminal else Console(stderr=True, width=150)

    th = report["threads"]
    t = Table(title=f"(a) test time per image, median of {len(report['images'])} images "
                    f"({report['device']}, {th['torch']} torch threads)", title_justify="left")
    for col in ("method", "proposals/img", "input", "proposals", "w/o proposals", "with proposals",
                "speedup w/o", "speedup with", "goal"):
        t.add_column(col, justify="left" if col in ("method", "input", "goal") else "right")
    for m, r in report["rows"].items():
        goals = []
        for key, label in (("without_proposals", "w/o"), ("with_proposals", "with")):
            g = GOALS.get((m, key))
            if g:
                v = r[f"speedup_{key}"] or 0
                goals.append(f"{label} >= {g:g}x {'met' if v >= g else 'NOT met'}")
        n = r["proposals_per_image"]
        t.add_row(REGISTRY[m].title, "—" if n is None else f"{n:.0f}", r["input"],
                  "in network" if m == "faster" else _fmt(r["proposals"]), _fmt(r["without_proposals"]),
                  _fmt(r["with_proposals"]), _fmt_x(r["speedup_without_proposals"]),
                  _fmt_x(r["speedup_with_proposals"]), "; ".join(goals))
    out.print(t)
    p = report.get("plain_torchvision")
    if p:
        t2 = Table(title="(b) our FasterRCNNDetector vs plain torchvision FasterRCNN (same weights, same images)",
                   title_justify="left")
        for col in ("ours", "plain torchvision", "ratio ours/plain", "goal", "max box difference (px)"):
            t2.add_column(col, justify="right")
        t2.add_row(_fmt(p["ours"]), _fmt(p["plain"]), f"{p['ratio']:.3f}",
                   f"<= {PLAIN_GOAL}: {'met' if p['ratio'] <= PLAIN_GOAL else 'not met'}", f"{p['max_box_difference']:.2g}")
        out.print(t2)
    d = report.get("default_runtime")
    if d:
        t4 = Table(title=f"(d) rcnn detect's default --runtime auto ({d['runtime']}) vs --runtime torch, Faster R-CNN",
                   title_justify="left")
        for col in ("torch", f"auto ({d['runtime']})", "ratio auto/torch", "max box difference (px)"):
            t4.add_column(col, justify="right")
        t4.add_row(_fmt(d["torch"]), _fmt(d["auto"]), f"{d['ratio']:.3f}", f"{d['max_box_difference']:.2g}")
        out.print(t4)
    agr = report.get("agreement_with_compare")
    if agr:
        t3 = Table(title=f"(c) agreement with {report['compare']}/compare.json (goal: within 20%)", title_justify="left")
        for col in ("method", "timing", "compare", "bench", "bench/compare", "within 20%"):
            t3.add_column(col, justify="left" if col in ("method", "timing") else "right")
        for m, d in agr.items():
            for k, v in d.items():
                t3.add_row(REGISTRY[m].title, k.replace("_", " "), _fmt(v["compare"]), _fmt(v["bench"]),
                           f"{v['ratio']:.2f}", "yes" if abs(v["ratio"] - 1) <= 0.2 else "NO")
        out.print(t3)


if __name__ == "__main__":
    main()
