"""scripts/bench_quality.py: dataset specs and the table it appends to docs/quality.md (values)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_quality.py"
spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
bq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bq)


def test_dataset_specs():
    shared = Path("/data")
    assert bq.dataset_spec("aquarium", shared) == ("aquarium", shared / "aquarium/data.yaml", "train", "test")
    assert bq.dataset_spec("/x/pets:trainval:val", shared) == ("pets", Path("/x/pets"), "trainval", "val")
    assert bq.dataset_spec("/x/pets", shared) == ("pets", Path("/x/pets"), None, "test")


def test_table_gives_each_seed_the_mean_and_the_paired_differences():
    rows = [
        {"dataset": "raccoon", "recipe": "--a", "seed": 0, "mAP": 0.90, "low": 0.85, "high": 0.95, "minutes": 10.0,
         "difference": {"value": 0.02, "low": -0.01, "high": 0.05, "better": 0.8}},
        {"dataset": "raccoon", "recipe": "", "seed": 0, "mAP": 0.88, "low": 0.80, "high": 0.93, "minutes": 12.0},
        {"dataset": "raccoon", "recipe": "--a", "seed": 1, "mAP": 0.94, "low": 0.90, "high": 0.97, "minutes": 11.0,
         "difference": {"value": -0.01, "low": -0.04, "high": 0.02, "better": 0.3}},
        {"dataset": "raccoon", "recipe": "", "seed": 1, "mAP": 0.95, "low": 0.91, "high": 0.98, "minutes": 12.0},
    ]
    lines = bq.table(rows, ["--a", ""])
    assert lines[2] == "| raccoon | `--a` | 0, 1 | 90.0 (85.0-95.0); 94.0 (90.0-97.0) | **92.0** | 10.5 |"
    assert lines[3] == "| raccoon | `(defaults)` | 0, 1 | 88.0 (80.0-93.0); 95.0 (91.0-98.0) | **91.5** | 12.0 |"
    assert "| raccoon | 0 | +2.00 | -1.00 to +5.00 | 80 % |" in lines
    assert lines[-1] == "| raccoon | mean of 2 | +0.50 | | |"
