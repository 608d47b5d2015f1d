#!/usr/bin/env python
"""Benchmark: our VOC07/VOC12 evaluation vs pycocotools' bbox evaluation on the same data.

    python scripts/bench_evaluate.py [--images 5000] [--dets 100] [--classes 20] [--seed 0] [--repeat 1]

A synthetic split (no pixels needed): per image 1..12 objects of 20 classes (10% difficult) in a
500x375 frame; per image ``--dets`` detections, jittered copies of the objects (right or wrong
class) and random boxes, random scores. Times (best of ``--repeat``):

* ours ``voc07`` / ``voc12``: ``rcnn_cli.evaluation.evaluate`` from the in-memory detections
  (gathering, checks, matching, AP);
* pycocotools: ``loadRes`` + ``COCOeval.evaluate`` + ``accumulate`` + ``summarize`` from the same
  detections as a numpy array, with the ground-truth ``COCO`` object built beforehand;
* ours ``coco`` (conversion + pycocotools), for reference.

The goal is ratio (ours / pycocotools) <= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.evaluation import evaluate
from rcnn_cli.evaluation.coco import build_coco_gt, coco_results_array


def make_data(n_images: int, n_dets: int, n_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    classes = [f"class{k:02d}" for k in range(n_classes)]
    W, H = 500.0, 375.0
    records, detections = [], {}
    for i in range(n_images):
        m = int(rng.integers(1, 13))
        xy = rng.uniform([0, 0], [W - 40, H - 40], (m, 2))
        wh = rng.uniform(16, 200, (m, 2))
        boxes = np.round(np.concatenate([xy, np.minimum(xy + wh, [W - 1, H - 1])], 1))
        labels = [classes[k] for k in rng.integers(0, n_classes, m)]
        image_id = f"{i:06d}"
        records.append(ImageRecord(image_id, Path(f"{image_id}.jpg"), int(W), int(H), boxes.astype(np.float32), labels,
                                   rng.random(m) < 0.1, np.zeros(m, bool)))
        n_near = int(n_dets * 0.6)
        j = rng.integers(0, m, n_near)
        size = np.concatenate([boxes[j, 2:] - boxes[j, :2]] * 2, 1)
        near = boxes[j] + rng.normal(0, 0.15, (n_near, 4)) * size
        near_lab = [labels[t] if rng.random() < 0.7 else classes[rng.integers(n_classes)] for t in j]
        n_rand = n_dets - n_near
        xy = rng.uniform([0, 0], [W, H], (n_rand, 2))
        rand = np.concatenate([xy, xy + rng.uniform(8, 250, (n_rand, 2))], 1)
        rand_lab = [classes[k] for k in rng.integers(0, n_classes, n_rand)]
        detections[image_id] = ImageDetections(image_id, np.concatenate([near, rand]), rng.random(n_dets),
                                               near_lab + rand_lab)
    return Dataset(root=Path("."), split="bench", classes=classes, records=records), detections


def best_of(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def pycocotools_eval(gt, results: np.ndarray):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    dataset, dets = make_data(args.images, args.dets, args.classes, args.seed)
    n_obj = sum(len(r.labels) for r in dataset.records)
    gt = build_coco_gt(dataset)
    results = coco_results_array(dataset, dets)
    print(f"data: {args.images} images, {n_obj} objects, {len(results)} detections, {args.classes} classes "
          f"(generated in {time.perf_counter() - t0:.1f} s); python {platform.python_version()}, "
          f"{platform.machine()}", flush=True)

    t_coco, stats = best_of(lambda: pycocotools_eval(gt, results), args.repeat)
    rows = []
    for metric in ("voc07", "voc12"):
        t, res = best_of(lambda: evaluate(dataset, dets, metric=metric), args.repeat)
        rows.append((f"ours {metric} (IoU 0.5)", t, res["mAP"]))
    t_ours_coco, res_coco = best_of(lambda: evaluate(dataset, dets, metric="coco"), 1)
    rows.append(("pycocotools bbox (loadRes+evaluate+accumulate+summarize)", t_coco, float(stats[0])))
    rows.append(("ours coco (conversion + pycocotools)", t_ours_coco, res_coco["mAP"]))

    width = max(len(r[0]) for r in rows)
    print(f"\n| {'evaluation'.ljust(width)} | seconds | ratio to pycocotools | mAP |")
    print(f"|{'-' * (width + 2)}|--------:|---------------------:|----:|")
    for name, t, m in rows:
        print(f"| {name.ljust(width)} | {t:7.2f} | {t / t_coco:20.3f} | {m:.4f} |")
    worst = max(t for name, t, _ in rows[:2]) / t_coco
    print(f"\nVOC metrics / pycocotools: {worst:.3f} -> {'OK (<= 1.0)' if worst <= 1.0 else 'SLOWER'}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
