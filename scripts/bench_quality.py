#!/usr/bin/env python
"""The quality benchmark: a recipe (flags; empty = the defaults) x datasets x seeds of `rcnn faster train`.

Each run trains with ``--time-budget`` (full: 30m; ``--screen``: 8m), detects on the test split and
is scored as VOC12 mAP with its 95 % interval over the test images (1000 bootstrap resamples). Per
dataset the table gives each seed's figure, the mean over seeds and the minutes trained; with
``--against-recipe`` the second recipe runs on the same seeds and each pair's difference is scored
on the same resamples of the same images (``rcnn evaluate --against``), with the mean difference.
Results are appended to ``docs/quality.md`` (``--doc``) under the command that produced them.
Finished runs are reused, so an interrupted benchmark continues where it stopped.

    python scripts/bench_quality.py --datasets bccd raccoon aquarium --seeds 0 1 2 \\
        [--recipe "--color-jitter 0.3"] [--against-recipe ""] [--screen] [--out runs/quality]

Datasets: ``bccd`` (trainval -> test), ``raccoon`` (train -> test), ``aquarium`` (train -> test)
under ``--shared`` (default ``../shared/datasets``), or any dataset path (``PATH[:TRAIN[:TEST]]``;
without splits named: the training command's own choice, and ``test``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = {"bccd": ("bccd", "trainval", "test"), "raccoon": ("raccoon", "train", "test"),
          "aquarium": ("aquarium/data.yaml", "train", "test")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["bccd", "raccoon", "aquarium"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--recipe", default="", help="flags of `rcnn faster train` (empty: the defaults)")
    p.add_argument("--against-recipe", default=None, help="a second recipe, paired on the same seeds and images")
    p.add_argument("--budget", default="30m", help="--time-budget of every run (full mode)")
    p.add_argument("--screen", action="store_true", help="screening: --time-budget 8m")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "quality.md")
    p.add_argument("--resamples", type=int, default=1000)
    return p.parse_args(argv)


def dataset_spec(name: str, shared: Path) -> tuple[str, Path, str | None, str]:
    """``(label, path, training split or None, test split)`` of a shared name or ``PATH[:TRAIN[:TEST]]``."""
    if name in SHARED:
        sub, train, test = SHARED[name]
        return name, shared / sub, train, test
    path, *splits = name.split(":")
    return Path(path).name, Path(path), (splits[0] if splits else None), (splits[1] if len(splits) > 1 else "test")


def _rcnn() -> list[str]:
    return [sys.executable, "-c", "from rcnn_cli.entry import main; main()"]


def _key(recipe: str) -> str:
    return "defaults" if not recipe.strip() else hashlib.sha256(recipe.encode()).hexdigest()[:8]


def run_one(spec, seed: int, recipe: str, budget: str, out: Path) -> dict:
    """Train (unless finished), detect on the test split; the run folder and minutes trained."""
    label, path, train, test = spec
    run = out / label / f"{_key(recipe)}_seed{seed}"
    dets = run / "test.jsonl"
    record = run / "config.json"
    done = record.is_file() and json.loads(record.read_text()).get("complete")
    cmd = [*_rcnn(), "faster", "train", str(path), *(["--split", train] if train else []), "--out", str(run),
           "--time-budget", budget, "--seed", str(seed), "--no-progress", *shlex.split(recipe)]
    if not done:
        if run.exists():
            cmd.append("--resume")
        print("$", shlex.join(["rcnn", *cmd[3:]]), flush=True)
        subprocess.run(cmd, check=True)
    if not dets.is_file():
        subprocess.run([*_rcnn(), "detect", str(path), "--split", test, "--model", str(run), "--out", str(dets),
                        "--no-progress"], check=True)
    summary = json.loads(record.read_text()).get("summary") or {}
    return {"run": run, "dets": dets, "minutes": (summary.get("train_time_s") or 0) / 60,
            "command": shlex.join(["rcnn", *cmd[3:]])}


def score(spec, runs: dict, resamples: int, against: dict | None = None) -> dict:
    from rcnn_cli.data.inputs import dataset_classes, load_dataset
    from rcnn_cli.evaluation import evaluate
    from rcnn_cli.io.detections import read_detections

    _, path, _, test = spec
    ds = load_dataset(path, test, None, dataset_classes(path))
    dets = read_detections(runs["dets"], ds)
    other = read_detections(against["dets"], ds) if against else None
    r = evaluate(ds, dets, metric="voc12", bootstrap=resamples, against=other)
    b = r["bootstrap"]
    out = {"mAP": r["mAP"], "low": b["mAP"]["low"], "high": b["mAP"]["high"], "minutes": runs["minutes"]}
    if other is not None:
        d = b["difference"]
        out["difference"] = {"value": r["mAP"] - r["against_mAP"], "low": d["low"], "high": d["high"],
                             "better": d["better"]}
    return out


def table(rows: list[dict], recipes: list[str]) -> list[str]:
    """Markdown lines: per dataset and recipe, each seed's mAP with its interval, the mean, minutes."""
    lines = ["| dataset | recipe | seeds | VOC12 mAP per seed (95 % interval over the test images) | mean | "
             "minutes (mean) |", "|---|---|---|---|---:|---:|"]
    for label in dict.fromkeys(r["dataset"] for r in rows):
        for recipe in recipes:
            mine = [r for r in rows if r["dataset"] == label and r["recipe"] == recipe]
            if not mine:
                continue
            per = "; ".join(f"{100 * r['mAP']:.1f} ({100 * r['low']:.1f}-{100 * r['high']:.1f})" for r in mine)
            lines.append(f"| {label} | `{recipe or '(defaults)'}` | {', '.join(str(r['seed']) for r in mine)} | {per} | "
                         f"**{100 * np.mean([r['mAP'] for r in mine]):.1f}** | "
                         f"{np.mean([r['minutes'] for r in mine]):.1f} |")
    paired = [r for r in rows if "difference" in r]
    if paired:
        lines += ["", "| dataset | seed | recipe minus against | 95 % interval | higher in |", "|---|---:|---:|---:|---:|"]
        for r in paired:
            d = r["difference"]
            lines.append(f"| {r['dataset']} | {r['seed']} | {100 * d['value']:+.2f} | {100 * d['low']:+.2f} to "
                         f"{100 * d['high']:+.2f} | {100 * d['better']:.0f} % |")
        for label in dict.fromkeys(r["dataset"] for r in paired):
            diffs = [r["difference"]["value"] for r in paired if r["dataset"] == label]
            lines.append(f"| {label} | mean of {len(diffs)} | {100 * np.mean(diffs):+.2f} | | |")
    return lines


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    budget = "8m" if args.screen else args.budget
    recipes = [args.recipe] + ([args.against_recipe] if args.against_recipe is not None else [])
    rows, started = [], time.time()
    for name in args.datasets:
        spec = dataset_spec(name, args.shared.resolve())
        for seed in args.seeds:
            runs = {recipe: run_one(spec, seed, recipe, budget, args.out) for recipe in recipes}
            for recipe in recipes:
                against = runs[args.against_recipe] if recipe == args.recipe and len(recipes) > 1 else None
                result = score(spec, runs[recipe], args.resamples, against)
                rows.append({"dataset": spec[0], "recipe": recipe, "seed": seed, **result})
                print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)
    lines = table(rows, recipes)
    print("\n".join(lines))
    command = shlex.join(["python", "scripts/bench_quality.py", *(sys.argv[1:] if argv is None else argv)])
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    with open(args.doc, "a", encoding="utf-8") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d')}: `{command}`\n\n({'screening' if args.screen else 'full'}, "
                f"--time-budget {budget}, 2-core CPU; {(time.time() - started) / 60:.0f} minutes in all)\n\n"
                + "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
