#!/usr/bin/env python
"""How well the backbone rule's speed probe predicts training speed.

``rcnn faster train --time-budget`` chooses its backbone from a probe
(:func:`rcnn_cli.engine.time_iterations`: 2 iterations left out, 6 timed) before training. This script
runs that probe in a fresh process per row, with the trainer's memory policy
(:func:`rcnn_cli.memory.reuse_memory`, what the probe does) and with glibc's default, and divides each
figure by the seconds per iteration a finished run's trainer measured over its first 20 iterations
(``train.time_budget_plan.seconds_per_iter`` in its ``config.json``): a ratio of 1 is a perfect
prediction, above 1 the probe over-estimates (the rule then errs toward the smaller backbone).

    python scripts/bench_probe.py --run runs/quality/bccd/d204c4ad_seed0 [--run RUN ...] [--repeats 2]
        [--iterations 6 18] [--policies reuse default]

Each run's dataset, split, configuration and seed are read from its record.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
from pathlib import Path
from rcnn_cli import memory
from rcnn_cli.data.inputs import load_training_dataset
from rcnn_cli.engine import TrainConfig, time_iterations
from rcnn_cli.models.faster_rcnn import FasterRCNNConfig
from rcnn_cli.models.faster_rcnn.model import build_model
from rcnn_cli.models.faster_rcnn.train import training_dataset

record, policy, iterations = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], int(sys.argv[3])
if policy == "default":
    memory.reuse_memory = lambda: None  # glibc's own rule, as before the probe set the trainer's
trained_on = record["model"]["trained_on"]
ds = load_training_dataset(trained_on["dataset"], trained_on["split"], None)
cfg = FasterRCNNConfig.from_dict(record["model"])
tc = TrainConfig(**{k: v for k, v in record["train"].items() if k in ("batch_size", "workers", "seed", "momentum")},
                 device="cpu", progress=False)
print(time_iterations(build_model(cfg, weights=cfg.weights), training_dataset(ds, cfg, tc.seed), tc, iterations=iterations))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, action="append", required=True, help="a finished run with a time budget")
    p.add_argument("--repeats", type=int, default=1, help="probes per run and policy (each in a fresh process)")
    p.add_argument("--iterations", type=int, nargs="+", default=[6], help="timed iterations (the rule's: 6)")
    p.add_argument("--policies", nargs="+", default=["reuse", "default"], choices=["reuse", "default"])
    return p.parse_args(argv)


def probe(record: Path, policy: str, iterations: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(record), policy, str(iterations)], check=True,
                         capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    print("| run | backbone | trainer s/iter (first 20) | policy | timed iterations | probe s/iter | probe / trainer |")
    print("|---|---|---:|---|---:|---:|---:|")
    for run in args.run:
        record = json.loads((run / "config.json").read_text())
        truth = record["train"]["time_budget_plan"]["seconds_per_iter"]
        for policy in args.policies:
            for n in args.iterations:
                for _ in range(args.repeats):
                    s = probe(run / "config.json", policy, n)
                    print(f"| {run.parent.name}/{run.name} | {record['model']['backbone']} | {truth:.2f} | {policy} | "
                          f"{n} | {s:.2f} | {s / truth:.2f} |", flush=True)


if __name__ == "__main__":
    main()
