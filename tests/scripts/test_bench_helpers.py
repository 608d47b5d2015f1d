"""The benchmark scripts' shared helpers still call the library as it is (scripts/bench_train.py and
scripts/bench_features.py broke once when ``run_propose`` changed): random proposals written and read back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_random_proposals_file_holds_the_boxes_asked_for(shapes_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_train

    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.proposals import load

    ds = load_dataset(shapes_root, "trainval")
    out = bench_train.random_proposals(ds, 5, tmp_path / "p.h5")
    with load(out) as reader:
        for record in ds.records[:3]:
            boxes = np.asarray(reader.boxes(record.image_id))
            assert boxes.shape == (5, 4)
            assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
            assert (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()
    sys.modules.pop("bench_train", None)
    sys.modules.pop("bench_features", None)
