#!/usr/bin/env python
"""Compare `rcnn_cli.evaluation.evaluate` (vectorised) with a line-by-line transcription of the
PASCAL VOC devkit's VOCevaldet.m / VOCap.m on random detections over a real dataset.

    python scripts/check_voc_eval.py [--dataset ../shared/datasets/bccd] [--split test] [--seed 0] [--trials 6]

Random detections are jittered copies of ground-truth boxes (so that IoUs spread around the
threshold, with duplicates and difficult matches) plus uniform random boxes. Prints the largest
per-class |difference| for voc07 and voc12 at IoU 0.5 and 0.7 (the later trials with ~10% of
the objects marked difficult in memory; trial 0 also through a JSON-lines file and the
`rcnn evaluate` CLI); exits 1 if any exceeds 1e-9.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

from rcnn_cli.data.inputs import load_dataset
from rcnn_cli.cli import main as cli_main
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.io.detections import open_writer
from rcnn_cli.evaluation import evaluate


# ----------------------------------------------------------------- the devkit, transcribed with loops
def matlab_colon(a: float, d: float, b: float) -> list[float]:
    n = int(math.floor((b - a) / d + 1e-10))
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
    for k in range(n - n // 2):
        out[n - k] = (a + n * d) - k * d
    return out


def devkit_ap(dataset, detections, cls: str, minoverlap: float, year: int) -> float | None:
    # extract ground truth objects
    gt = {}
    npos = 0
    for r in dataset.records:
        bb = [list(map(float, b)) for b, lab in zip(r.boxes, r.labels) if lab == cls]
        diff = [bool(d) for d, lab in zip(r.difficult, r.labels) if lab == cls]
        gt[r.image_id] = {"BB": bb, "diff": diff, "det": [False] * len(bb)}
        npos += sum(1 for d in diff if not d)
    # load results (image order of the dict, then detection order)
    ids, confidence, BB = [], [], []
    for image_id, det in detections.items():
        for box, score, lab in zip(det.boxes, det.scores, det.labels):
            if lab == cls:
                ids.append(image_id)
                confidence.append(float(score))
                BB.append([float(v) for v in box])
    # sort detections by decreasing confidence (MATLAB's sort is stable)
    si = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    ids = [ids[i] for i in si]
    BB = [BB[i] for i in si]
    nd = len(confidence)
    tp = [0] * nd
    fp = [0] * nd
    for d in range(nd):
        g = gt[ids[d]]
        bb = BB[d]
        ovmax = -math.inf
        jmax = None
        for j, bbgt in enumerate(g["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        if ovmax >= minoverlap:
            if g["diff"][jmax]:
                pass
            elif not g["det"][jmax]:
                tp[d] = 1
                g["det"][jmax] = True
            else:
                fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return None
    rec, prec = [], []
    ctp = cfp = 0
    for d in range(nd):
        ctp += tp[d]
        cfp += fp[d]
        rec.append(ctp / npos)
        prec.append(ctp / (ctp + cfp) if ctp + cfp > 0 else math.nan)
    if year == 2007:
        ap = 0.0
        for t in matlab_colon(0.0, 0.1, 1.0):
            ps = [p for r, p in zip(rec, prec) if r >= t and not math.isnan(p)]
            ap = ap + (max(ps) if ps else 0.0) / 11
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        a, b = mpre[i], mpre[i + 1]
        mpre[i] = b if math.isnan(a) else (a if math.isnan(b) else max(a, b))
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


# ----------------------------------------------------------------- random detections
def random_detections(dataset, rng: np.random.Generator, per_image: int = 12) -> dict[str, ImageDetections]:
    out = {}
    classes = dataset.classes
    for r in dataset.records:
        w = float(r.width or 640)
        h = float(r.height or 480)
        boxes, labels = [], []
        gts = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        for _ in range(per_image):
            if len(gts) and rng.random() < 0.7:
                j = rng.integers(len(gts))
                g = gts[j]
                size = np.array([g[2] - g[0], g[3] - g[1], g[2] - g[0], g[3] - g[1]])
                box = g + rng.normal(0, 0.12, 4) * size
                if rng.random() < 0.2:
                    box = np.round(box)  # integer boxes: IoU ties and exact threshold hits
                lab = r.labels[j] if rng.random() < 0.85 else classes[rng.integers(len(classes))]
            else:
                x1, y1 = rng.uniform(0, w), rng.uniform(0, h)
                box = np.array([x1, y1, x1 + rng.uniform(5, w / 3), y1 + rng.uniform(5, h / 3)])
                lab = classes[rng.integers(len(classes))]
            boxes.append(box)
            labels.append(lab)
        scores = rng.random(per_image)
        if rng.random() < 0.3:
            scores = np.round(scores, 1)  # ties in score
        out[r.image_id] = ImageDetections(r.image_id, np.asarray(boxes), scores, labels)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "bccd"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    dataset = load_dataset(args.dataset, args.split)
    n_obj = sum(len(r.labels) for r in dataset.records)
    n_diff = sum(int(np.sum(r.difficult)) for r in dataset.records)
    print(f"dataset {args.dataset} split {args.split}: {len(dataset)} images, {n_obj} objects ({n_diff} difficult), "
          f"classes {', '.join(dataset.classes)}")
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    # Second half of the trials: a copy of the split with ~10% of objects marked difficult (in memory),
    # so that the difficult rule is exercised even where the data has none (BCCD has none).
    hard = copy.deepcopy(dataset)
    for r in hard.records:
        r.difficult = rng.random(len(r.labels)) < 0.1
    print(f"{'trial':>5} {'metric':>6} {'iou':>4} {'dets':>6} {'mAP (ours)':>12} {'mAP (devkit)':>13} {'max |diff| per class':>21}")
    for trial in range(args.trials):
        if trial == (args.trials + 1) // 2:
            print(f"-- from here on: {sum(int(r.difficult.sum()) for r in hard.records)} objects marked difficult")
        if trial >= (args.trials + 1) // 2:
            dataset = hard
        dets = random_detections(dataset, rng)
        if trial == 0:
            # Through the files and the CLI as well: JSON lines written, `rcnn evaluate` run.
            with tempfile.TemporaryDirectory() as tmp:
                with open_writer(Path(tmp) / "d.jsonl", "jsonl", dataset.classes) as w:
                    for d in dets.values():
                        w.write(d)
                for metric, year in (("voc07", 2007), ("voc12", 2012)):
                    try:
                        with contextlib.redirect_stdout(io.StringIO()):
                                cli_main(["evaluate", args.dataset, "--split", args.split, "--detections",
                                      str(Path(tmp) / "d.jsonl"), "--metric", metric, "--json", str(Path(tmp) / "m.json")])
                    except SystemExit as e:
                        assert e.code == 0, e.code
                    got = json.loads((Path(tmp) / "m.json").read_text())["AP"]
                    d = max(abs(got[c] - devkit_ap(dataset, dets, c, 0.5, year)) for c in dataset.classes
                            if got[c] is not None)
                    worst = max(worst, d)
                    print(f"  rcnn evaluate --metric {metric} (CLI, JSON lines file): max |diff| per class {d:.3e}")
        n_det = sum(len(d) for d in dets.values())
        for metric, year in (("voc07", 2007), ("voc12", 2012)):
            for thr in (0.5, 0.7):
                t0 = time.perf_counter()
                ours = evaluate(dataset, dets, metric=metric, iou=thr)
                t_ours = time.perf_counter() - t0
                ref = {c: devkit_ap(dataset, dets, c, thr, year) for c in dataset.classes}
                diffs = [abs(ours["AP"][c] - ref[c]) for c in dataset.classes if ref[c] is not None]
                assert all((ours["AP"][c] is None) == (ref[c] is None) for c in dataset.classes)
                d = max(diffs) if diffs else 0.0
                worst = max(worst, d)
                ref_map = float(np.mean([v for v in ref.values() if v is not None]))
                print(f"{trial:>5} {metric:>6} {thr:>4} {n_det:>6} {ours['mAP']:>12.9f} {ref_map:>13.9f} {d:>21.3e}"
                      f"   ({t_ours * 1000:.0f} ms)")
    ok = worst <= 1e-9
    print(f"largest per-class difference: {worst:.3e} -> {'OK (<= 1e-9)' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
