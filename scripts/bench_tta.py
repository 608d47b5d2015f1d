#!/usr/bin/env python
"""Test-time flip, paired: each finished run of the quality benchmark detects its test split again
with ``--tta flip``; the table gives both VOC12 mAPs, their paired difference on the same resamples of
the same images (1000), and the median seconds per image of each, as a ratio.

    python scripts/bench_tta.py --datasets aquarium raccoon [--out runs/quality] [--doc docs/quality.md]

Runs are the folders ``OUT/<dataset>/<recipe>_seed<n>`` that ``scripts/bench_quality.py`` left (with
their ``test.jsonl``); the flipped detections go beside them as ``test_flip.jsonl`` (reused when there).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import SHARED, _rcnn, dataset_spec  # noqa: E402


def median_seconds(dets: Path) -> float:
    """The median total seconds per image that ``rcnn detect`` recorded beside ``dets``."""
    record = json.loads(Path(str(dets) + ".config.json").read_text())
    return float(record["config"]["result"]["timings"]["total"]["median"])


def detect(path: Path, test: str, run: Path, dets: Path, flip: bool) -> None:
    if not dets.is_file():
        subprocess.run([*_rcnn(), "detect", str(path), "--split", test, "--model", str(run), "--out", str(dets),
                        "--no-progress", *(["--tta", "flip"] if flip else [])], check=True)


def compare(spec, run: Path, resamples: int) -> dict:
    from rcnn_cli.data.inputs import dataset_classes, load_dataset
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.io.detections import read_detections

    _, path, _, test = spec
    plain, flip = run / "test.jsonl", run / "test_flip.jsonl"
    detect(path, test, run, plain, False)
    detect(path, test, run, flip, True)
    ds = load_dataset(path, test, None, dataset_classes(path))
    r = evaluate(ds, read_detections(flip, ds), metric="voc12", bootstrap=resamples,
                 against=read_detections(plain, ds))
    d = r["bootstrap"]["difference"]
    return {"run": run.name, "plain": r["against_mAP"], "flip": r["mAP"], "diff": r["mAP"] - r["against_mAP"],
            "low": d["low"], "high": d["high"], "s_plain": median_seconds(plain), "s_flip": median_seconds(flip)}


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(SHARED))
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--doc", type=Path, default=None, help="append the table here (e.g. docs/quality.md)")
    p.add_argument("--resamples", type=int, default=1000)
    args = p.parse_args(argv)
    lines = ["| dataset | run | VOC12 mAP | with flip | flip minus plain (95 % interval) | s/image | with flip | "
             "ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in args.datasets:
        spec = dataset_spec(name, args.shared)
        for run in sorted((args.out / spec[0]).glob("*_seed*")):
            if not (run / "model.safetensors").is_file():
                continue
            r = compare(spec, run, args.resamples)
            lines.append(f"| {spec[0]} | {r['run']} | {100 * r['plain']:.1f} | {100 * r['flip']:.1f} | "
                         f"{100 * r['diff']:+.2f} ({100 * r['low']:+.2f} to {100 * r['high']:+.2f}) | "
                         f"{r['s_plain']:.2f} | {r['s_flip']:.2f} | {r['s_flip'] / r['s_plain']:.2f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.doc:
        command = shlex.join(["python", "scripts/bench_tta.py", *(argv if argv is not None else sys.argv[1:])])
        with open(args.doc, "a", encoding="utf-8") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d')}: `{command}`\n\n" + "\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
