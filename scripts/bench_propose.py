"""Benchmark `rcnn propose` against a bare OpenCV selective-search loop on the same images.

Rows (one run, same images, same settings):
  * bare OpenCV: cv2.imread -> cv2.resize (longer side max-size, INTER_AREA) -> selective search
  * run_propose with 1 worker (load, resize, search, map back, filter, journal + HDF5 store)
  * run_propose with 2 workers (process pool), speedup over 1 worker
Goal: run_propose(1 worker) / bare <= 1.05. Optionally `--recall DATASET --split S` also compares
recall@0.5 of the two on a labelled split (acceptance: within 0.01).

    python scripts/bench_propose.py --num-images 12
    python scripts/bench_propose.py --images /work/shared/datasets/bccd --split test --num-images 72 --recall
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_opencv(paths: list[Path], mode: str, max_size: int, seed: int) -> tuple[float, dict]:
    import cv2

    from rcnn_cli.proposals import opencv_selective_search

    out = {}
    t0 = time.perf_counter()
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        if max(h, w) > max_size:
            s = max_size / max(h, w)
            bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        rects = opencv_selective_search(bgr, mode, seed)
        out[p.stem] = (rects, w, h, bgr.shape[1], bgr.shape[0])
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="/work/shared/datasets/bccd", help="VOC root or image folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num-images", type=int, default=12)
    ap.add_argument("--mode", default="fast", choices=["fast", "quality"])
    ap.add_argument("--max-size", type=int, default=500)
    ap.add_argument("--min-size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-workers", action="store_true", help="skip the 2-worker row")
    ap.add_argument("--recall", action="store_true", help="also compare recall@0.5 on the labelled split")
    args = ap.parse_args()

    from rcnn_cli.data.inputs import ImageInput, resolve_inputs
    from rcnn_cli.proposals import ProposalConfig, filter_boxes, load, run_propose
    from rcnn_cli.evaluation.recall import recall_stats

    tmp = Path(tempfile.mkdtemp(prefix="bench_propose_"))
    src = Path(args.images)
    if src.exists():
        inputs = resolve_inputs([str(src)], split=args.split if (src / "Annotations").is_dir() else None)
    else:
        from rcnn_cli.data.shapes import make_shapes

        root = make_shapes(tmp / "shapes", train=0, test=args.num_images, size=480, seed=0)
        inputs = resolve_inputs([str(root)], split="test")
        src = root
    inputs = inputs[: args.num_images]
    paths = [Path(i.path) for i in inputs]
    n = len(paths)
    print(f"{n} images from {src} (split {args.split}), mode {args.mode}, max-size {args.max_size}")

    # warm-up (page cache, OpenCV initialisation) so the first timed row is not penalised
    bare_opencv(paths[:1], args.mode, args.max_size, args.seed)

    t_bare, bare = bare_opencv(paths, args.mode, args.max_size, args.seed)
    t0 = time.perf_counter()
    config = ProposalConfig(mode=args.mode, max_size=args.max_size, min_size=args.min_size, seed=args.seed)
    run_propose(inputs, tmp / "w1.h5", config, workers=1, progress=False)
    t_one = time.perf_counter() - t0
    rows = [("bare OpenCV loop", t_bare, 1.0), ("run_propose, 1 worker", t_one, t_one / t_bare)]
    t_two = None
    if not args.skip_workers:
        t0 = time.perf_counter()
        run_propose(inputs, tmp / "w2.h5", config, workers=2, progress=False)
        t_two = time.perf_counter() - t0
        rows.append(("run_propose, 2 workers", t_two, t_two / t_bare))

    print(f"\n| {'run':<24} | {'total s':>8} | {'s/image':>8} | {'vs bare':>8} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, t, r in rows:
        print(f"| {name:<24} | {t:8.2f} | {t / n:8.3f} | {r:8.3f} |")
    print(f"\nratio run_propose(1 worker) / bare = {t_one / t_bare:.3f} (goal <= 1.05)")
    if t_two is not None:
        print(f"speedup 2 workers over 1 worker = {t_one / t_two:.2f}x (workers start with spawn: includes their import time)")

    # identical boxes? (same decoder is not guaranteed: PIL vs cv2.imread may differ by a few levels)
    same = 0
    with load(tmp / "w1.h5") as r:
        bare_boxes = {}
        for stem, (rects, w, h, nw, nh) in bare.items():
            b = rects.astype(np.float32)
            b[:, 2:] += b[:, :2]
            b *= np.array([w / nw, h / nh, w / nw, h / nh], np.float32)
            bare_boxes[stem] = filter_boxes(b, w, h, args.min_size)
        for i in inputs:
            if i.image_id in r and np.array_equal(r.boxes(i.image_id), bare_boxes.get(Path(i.path).stem)):
                same += 1
    print(f"images with identical boxes (run_propose vs bare loop + same filter): {same}/{n}")

    if args.recall and (src / "Annotations").is_dir():
        from rcnn_cli.data.inputs import load_dataset
        from rcnn_cli.proposals import _Store, FORMAT

        ds = load_dataset(src, args.split)
        ds.records = [rec for rec in ds.records if rec.image_id in {i.image_id for i in inputs}]
        # write the bare loop's boxes into a proposals file to score them the same way
        bare_file = tmp / "bare.h5"
        store = _Store(bare_file, {"format": FORMAT, "method": "bare-opencv"})
        for i in inputs:
            b = bare_boxes[Path(i.path).stem]
            store.add({"image_id": i.image_id, "boxes": b, "width": 0, "height": 0, "seconds": 0.0,
                       "load_seconds": 0.0, "method": "bare-opencv", "fallback": False, "note": ""})
        store.close()
        ours, theirs = recall_stats(ds, tmp / "w1.h5"), recall_stats(ds, bare_file)
        print(f"recall@0.5: run_propose {ours['recall@0.5']:.4f}, bare OpenCV {theirs['recall@0.5']:.4f} "
              f"(difference {abs(ours['recall@0.5'] - theirs['recall@0.5']):.4f}, goal <= 0.01); "
              f"recall@0.7 {ours['recall@0.7']:.4f} vs {theirs['recall@0.7']:.4f}; "
              f"boxes/image {ours['boxes_per_image']:.0f} vs {theirs['boxes_per_image']:.0f}")


if __name__ == "__main__":
    main()
