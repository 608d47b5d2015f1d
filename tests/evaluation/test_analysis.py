"""Error analysis on a hand-made image with one error of each type; every number computed by hand.

Objects (class, box): G1 a [0,0,20,20], G2 a [40,0,60,20], G3 b [0,40,20,60], G4 a [70,70,90,90].
Detections (class, box, score): D6 a [95,0,99,4] .95 (background), D1 a = G1 .9 (true positive),
D2 a = G1 .8 (duplicate), D3 a = G3 .7 (classification), D4 a [40,0,48,20] .6 (localization:
VOC IoU 9*21/21*21 = 0.4286 with G2), D5 b [40,0,48,20] .5 (both: the same box, the wrong class).
G4 is missed (G2 and G3 are not: a loc and a cls error point at them).

VOC12 AP: class a has D6 FP, D1 TP, then FPs: AP_a = 1/3 * 1/2 = 1/6; class b has D5 FP: AP_b = 0;
mAP = 1/12. Fixes: cls -> D3 becomes b and finds G3: AP_b = 1, mAP 7/12 (dAP 1/2); loc -> D4 takes
G2's box: recall 2/3 at precision 2/5, AP_a = 1/6 + 2/15 = 3/10, mAP 3/20 (dAP 1/15); bkg -> D6
removed: AP_a = 1/3, mAP 1/6 (dAP 1/12); missed -> G4 removed: AP_a = 1/2 * 1/2, mAP 1/8 (dAP 1/24);
dupe and both: removing them changes nothing (dAP 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.evaluation.analysis import confusion_matrix, error_breakdown, per_class_counts
from rcnn_cli.boxes import ImageDetections


@pytest.fixture
def case(tmp_path):
    path = tmp_path / "im.png"
    Image.new("RGB", (100, 100), (90, 90, 90)).save(path)
    rec = ImageRecord("im", path, 100, 100, np.array([[0, 0, 20, 20], [40, 0, 60, 20], [0, 40, 20, 60],
                                                      [70, 70, 90, 90]], np.float32), ["a", "a", "b", "a"],
                      np.zeros(4, bool))
    ds = Dataset(tmp_path, "test", ["a", "b"], [rec])
    det = ImageDetections("im", [[95, 0, 99, 4], [0, 0, 20, 20], [0, 0, 20, 20], [0, 40, 20, 60], [40, 0, 48, 20],
                                 [40, 0, 48, 20]], [0.95, 0.9, 0.8, 0.7, 0.6, 0.5], ["a", "a", "a", "a", "a", "b"])
    return ds, {"im": det}


def test_each_error_type_and_its_dap(case):
    ds, dets = case
    b = error_breakdown(ds, dets, metric="voc12")
    assert b["errors"]["im"].types == ["bkg", "tp", "dupe", "cls", "loc", "both"]
    assert b["errors"]["im"].missed == [3]
    assert b["counts"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "missed": 1}
    assert b["mAP"] == pytest.approx(1 / 12)
    expected = {"cls": 1 / 2, "loc": 1 / 15, "both": 0.0, "dupe": 0.0, "bkg": 1 / 12, "missed": 1 / 24}
    for kind, value in expected.items():
        assert b["dAP"][kind] == pytest.approx(value, abs=1e-9), kind


def test_confusion_matrix_and_per_class_counts(case):
    ds, dets = case
    conf = confusion_matrix(ds, dets, score_threshold=0.0)
    assert conf["classes"] == ["a", "b", "background"]
    # rows: objects a, b, background; columns: detected as a, b, nothing
    assert conf["matrix"] == [[1, 0, 2], [1, 0, 0], [3, 1, 0]]
    assert confusion_matrix(ds, dets, score_threshold=0.85)["matrix"] == [[1, 0, 2], [0, 0, 1], [1, 0, 0]]
    per = per_class_counts(ds, dets, score_threshold=0.0)
    assert per["a"] == {"tp": 1, "fp": 4, "fn": 2, "precision": 0.2, "recall": pytest.approx(1 / 3)}
    assert per["b"] == {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0}


def test_analysis_folder_opens_as_one_page(case, tmp_path):
    from rcnn_cli.evaluation.report import write_analysis

    ds, dets = case
    out = tmp_path / "analysis"
    rep = write_analysis(ds, dets, out, score_threshold=0.0)
    assert rep["worst"] == [{"image_id": "im", "errors": 6, "image": "worst/im.jpg"}]
    for name in ("analysis.json", "errors.png", "confusion.png", "worst/im.jpg", "index.html"):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert 'src="errors.png"' in page and 'src="confusion.png"' in page and "src='worst/im.jpg'" in page
    assert json.loads((out / "analysis.json").read_text())["breakdown"]["counts"]["missed"] == 1
    drawn = np.asarray(Image.open(out / "worst" / "im.jpg"))
    assert drawn.shape == (100, 100, 3) and (np.abs(drawn.astype(int) - 90).sum(axis=2) > 60).any()
