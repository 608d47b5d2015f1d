"""Evaluation: hand-computed AP cases, the devkit's matching rules, an independent loop transcription
of VOCevaldet.m compared on random detections, COCO against pycocotools run directly, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rcnn_cli.cli import main
from rcnn_cli.data.inputs import load_dataset
from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.io.detections import open_writer
from rcnn_cli.errors import UserError
from rcnn_cli.evaluation import evaluate
from rcnn_cli.evaluation.voc import VOC07_THRESHOLDS, voc07_ap, voc12_ap


def rec(image_id, boxes, labels, difficult=None):
    n = len(labels)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 200, 200, np.asarray(boxes, np.float32).reshape(-1, 4),
                       list(labels), np.asarray(difficult if difficult is not None else [False] * n, bool),
                       np.zeros(n, bool))


def dets(image_id, boxes, scores, labels):
    return ImageDetections(image_id, np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels)


A, B, C, D = [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]
FAR = [100, 100, 110, 110]


def base_dataset(difficult_d=False, extra_classes=()):
    boxes = [A, B, C] + ([D] if difficult_d else [])
    labels = ["cat"] * len(boxes)
    diff = [False, False, False] + ([True] if difficult_d else [])
    records = [rec("im1", boxes, labels, diff), rec("im2", [[5, 5, 50, 50]], ["dog"])]
    return Dataset(Path("."), "test", sorted(["cat", "dog", *extra_classes]), records)


# ------------------------------------------------------------------ hand-computed cases


def test_11_point_and_area_differ_on_hand_computed_case():
    # ranks: TP(A), FP, TP(B); C missed. rec = [1/3, 1/3, 2/3], prec = [1, 1/2, 2/3]
    ds = base_dataset()
    d = {"im1": dets("im1", [A, FAR, B], [0.9, 0.8, 0.7], ["cat"] * 3)}
    r07 = evaluate(ds, d, "voc07")
    r12 = evaluate(ds, d, "voc12")
    # 11-point: t in {0, .1, .2, .3(+eps)} -> 1; t in {.4, .5, .6} -> 2/3; t >= .7 -> 0
    assert r07["AP"]["cat"] == pytest.approx((4 * 1 + 3 * (2 / 3)) / 11, abs=1e-12)  # 0.5454...
    # area: 1/3 * 1 + 1/3 * 2/3
    assert r12["AP"]["cat"] == pytest.approx(5 / 9, abs=1e-12)
    assert r07["AP"]["cat"] != pytest.approx(r12["AP"]["cat"], abs=1e-3)
    # dog has an object but no detection: AP 0, and it counts in the mean
    assert r07["AP"]["dog"] == 0.0
    assert r07["mAP"] == pytest.approx(6 / 11 / 2, abs=1e-12)
    assert r07["num_objects"] == {"cat": 3, "dog": 1}
    assert r07["num_images"] == 2 and r07["num_detections"] == 3


def test_difficult_matches_are_neither_tp_nor_fp():
    ds = base_dataset(difficult_d=True)
    plain = {"im1": dets("im1", [A, FAR, B], [0.9, 0.8, 0.7], ["cat"] * 3)}
    # Two detections on the difficult object D, one ranked first (precision 0/0 there), one in the middle.
    with_d = {"im1": dets("im1", [D, A, FAR, D, B], [0.95, 0.9, 0.8, 0.75, 0.7], ["cat"] * 5)}
    for metric in ("voc07", "voc12"):
        assert evaluate(ds, with_d, metric)["AP"]["cat"] == pytest.approx(evaluate(ds, plain, metric)["AP"]["cat"], abs=1e-12)
    assert evaluate(ds, with_d, "voc12")["AP"]["cat"] == pytest.approx(5 / 9, abs=1e-12)
    assert evaluate(ds, with_d, "voc12")["num_objects"]["cat"] == 3  # npos excludes difficult


def test_duplicate_detections_are_false_positives():
    ds = base_dataset()
    # A detected twice: the higher-scored one is the TP, the second an FP.
    d = {"im1": dets("im1", [A, A, FAR, B], [0.9, 0.85, 0.8, 0.7], ["cat"] * 4)}
    # rec = [1/3, 1/3, 1/3, 2/3], prec = [1, 1/2, 1/3, 1/2]
    assert evaluate(ds, d, "voc12")["AP"]["cat"] == pytest.approx(1 / 3 + 1 / 3 * 0.5, abs=1e-12)
    assert evaluate(ds, d, "voc07")["AP"]["cat"] == pytest.approx((4 * 1 + 3 * 0.5) / 11, abs=1e-12)


def test_match_goes_to_highest_iou_even_if_already_taken():
    # The devkit takes the highest-IoU object even when it is already detected (then FP),
    # rather than falling back to a free object.
    ds = Dataset(Path("."), "test", ["cat"], [rec("im", [[0, 0, 99, 99], [0, 0, 79, 99]], ["cat", "cat"])])
    d = {"im": dets("im", [[0, 0, 99, 99], [0, 0, 95, 99]], [0.9, 0.8], ["cat", "cat"])}
    # 2nd det IoU: 0.96 with the first object (taken), 0.83 with the second -> FP.
    r = evaluate(ds, d, "voc12")
    assert r["AP"]["cat"] == pytest.approx(0.5, abs=1e-12)


def test_iou_exactly_at_threshold_with_plus_one_convention():
    ds = Dataset(Path("."), "test", ["cat"], [rec("im", [[0, 0, 9, 9]], ["cat"])])
    # +1 convention: gt 10x10 = 100, det 10x5 = 50, intersection 50 -> IoU exactly 0.5 -> TP (>=).
    # (Continuous widths would give 36/81 = 0.44 -> FP.)
    at = {"im": dets("im", [[0, 0, 9, 4]], [0.9], ["cat"])}
    below = {"im": dets("im", [[0, 0, 9, 3]], [0.9], ["cat"])}  # 40/100
    assert evaluate(ds, at, "voc12", iou=0.5)["AP"]["cat"] == 1.0
    assert evaluate(ds, below, "voc12", iou=0.5)["AP"]["cat"] == 0.0
    assert evaluate(ds, below, "voc12", iou=0.4)["AP"]["cat"] == 1.0


def test_voc07_thresholds_follow_matlab_colon():
    # MATLAB's 0:0.1:1 gives 0.30000000000000004 but exactly 0.7 (second half computed from 1).
    assert VOC07_THRESHOLDS[3] == 0.1 * 3 and VOC07_THRESHOLDS[3] > 0.3
    assert VOC07_THRESHOLDS[7] == 0.7 and VOC07_THRESHOLDS[-1] == 1.0 and len(VOC07_THRESHOLDS) == 11
    # recall 7/10 reaches t = 0.7 -> 8 of 11 points at precision 1
    rec7 = np.arange(1, 8) / 10.0
    assert voc07_ap(rec7, np.ones(7)) == pytest.approx(8 / 11, abs=1e-12)
    # recall 3/10 = 0.3 does not reach 0.30000000000000004 -> 3 points
    assert voc07_ap(np.arange(1, 4) / 10.0, np.ones(3)) == pytest.approx(3 / 11, abs=1e-12)


def test_ap_functions_on_edge_cases():
    assert voc07_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc12_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc12_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    # NaN precision (0/0 before any TP/FP) is ignored, as MATLAB's max does
    assert voc12_ap(np.array([0.0, 1.0]), np.array([np.nan, 1.0])) == 1.0


def test_class_without_objects_is_left_out_and_empty_detections_are_valid():
    ds = base_dataset(extra_classes=("zebra",))
    r = evaluate(ds, {}, "voc07")
    assert r["AP"] == {"cat": 0.0, "dog": 0.0, "zebra": None} and r["mAP"] == 0.0 and r["num_detections"] == 0
    r = evaluate(ds, {"im2": dets("im2", [[5, 5, 50, 50]], [0.5], ["dog"])}, "voc12")
    assert r["AP"]["dog"] == 1.0 and r["mAP"] == pytest.approx(0.5)  # mean over cat, dog only
    rc = evaluate(ds, {}, "coco")
    assert rc["mAP"] == 0.0 and rc["AP"]["cat"] == 0.0 and rc["AP"]["zebra"] is None


def test_unknown_images_or_classes_are_errors_unless_ignored():
    ds = base_dataset()
    good = dets("im1", [A, B], [0.9, 0.8], ["cat", "cat"])
    with pytest.raises(UserError, match="not in the dataset"):
        evaluate(ds, {"im1": good, "nope": dets("nope", [A], [0.5], ["cat"])})
    with pytest.raises(UserError, match="unknown class"):
        evaluate(ds, {"im1": dets("im1", [A, B], [0.9, 0.8], ["cat", "horse"])})
    r = evaluate(ds, {"im1": dets("im1", [A, B, C], [0.9, 0.8, 0.85], ["cat", "cat", "horse"]),
                      "nope": dets("nope", [A], [0.5], ["cat"])}, ignore_unknown=True)
    assert r["AP"] == evaluate(ds, {"im1": good})["AP"] and r["num_detections"] == 2
    with pytest.raises(UserError, match="metric"):
        evaluate(ds, {}, metric="voc2010")


# ------------------------------------------------------------------ independent transcription


def _matlab_colon(a, d, b):
    n = int(math.floor((b - a) / d + 1e-10))
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
    for k in range(n - n // 2):
        out[n - k] = (a + n * d) - k * d
    return out


def devkit_ap(dataset, detections, cls, minoverlap, year):
    """VOCevaldet.m + VOCap.m, transcribed loop by loop."""
    gt, npos = {}, 0
    for r in dataset.records:
        bb = [list(map(float, b)) for b, lab in zip(r.boxes, r.labels) if lab == cls]
        diff = [bool(x) for x, lab in zip(r.difficult, r.labels) if lab == cls]
        gt[r.image_id] = {"BB": bb, "diff": diff, "det": [False] * len(bb)}
        npos += sum(not x for x in diff)
    ids, conf, BB = [], [], []
    for image_id, det in detections.items():
        for box, score, lab in zip(det.boxes, det.scores, det.labels):
            if lab == cls:
                ids.append(image_id)
                conf.append(float(score))
                BB.append([float(v) for v in box])
    si = sorted(range(len(conf)), key=lambda i: -conf[i])  # stable, as MATLAB's sort
    nd = len(si)
    tp, fp = [0] * nd, [0] * nd
    for d in range(nd):
        g, bb = gt[ids[si[d]]], BB[si[d]]
        ovmax, jmax = -math.inf, None
        for j, bbgt in enumerate(g["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
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
    rec, prec, ctp, cfp = [], [], 0, 0
    for d in range(nd):
        ctp += tp[d]
        cfp += fp[d]
        rec.append(ctp / npos)
        prec.append(ctp / (ctp + cfp) if ctp + cfp else math.nan)
    if year == 2007:
        ap = 0.0
        for t in _matlab_colon(0.0, 0.1, 1.0):
            ps = [p for r_, p in zip(rec, prec) if r_ >= t and not math.isnan(p)]
            ap = ap + (max(ps) if ps else 0.0) / 11
        return ap
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        a, b = mpre[i], mpre[i + 1]
        mpre[i] = b if math.isnan(a) else (a if math.isnan(b) else max(a, b))
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def random_case(seed, n_images=40, per_image=15):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d_e"]
    records, detections = [], {}
    for i in range(n_images):
        m = int(rng.integers(0, 7))
        xy = rng.integers(0, 150, (m, 2))
        boxes = np.concatenate([xy, xy + rng.integers(4, 60, (m, 2))], 1).astype(np.float64)
        labels = [classes[k] for k in rng.integers(0, 3, m)]  # class "d_e" never has objects
        diff = rng.random(m) < 0.2
        records.append(rec(f"img{i:03d}", boxes, labels, diff))
        db, dl = [], []
        for _ in range(per_image):
            if m and rng.random() < 0.75:
                j = rng.integers(m)
                size = np.r_[boxes[j, 2:] - boxes[j, :2], boxes[j, 2:] - boxes[j, :2]]
                b = boxes[j] + rng.normal(0, 0.15, 4) * size
                if rng.random() < 0.3:
                    b = np.round(b)  # exact IoU ties and threshold hits
                lab = labels[j] if rng.random() < 0.85 else classes[rng.integers(4)]
            else:
                xy0 = rng.uniform(0, 180, 2)
                b = np.r_[xy0, xy0 + rng.uniform(2, 60, 2)]
                lab = classes[rng.integers(4)]
            db.append(b)
            dl.append(lab)
        scores = rng.random(per_image)
        if i % 3 == 0:
            scores = np.round(scores, 1)  # ties in score across images
        if rng.random() < 0.9:
            detections[f"img{i:03d}"] = dets(f"img{i:03d}", db, scores, dl)
    return Dataset(Path("."), "test", classes, records), detections


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_devkit_transcription(seed):
    ds, d = random_case(seed)
    assert sum(int(np.sum(r.difficult)) for r in ds.records) > 0
    for metric, year in (("voc07", 2007), ("voc12", 2012)):
        for thr in (0.5, 0.7):
            ours = evaluate(ds, d, metric, iou=thr)
            for c in ds.classes:
                ref = devkit_ap(ds, d, c, thr, year)
                if ref is None:
                    assert ours["AP"][c] is None
                else:
                    assert abs(ours["AP"][c] - ref) <= 1e-9, (metric, thr, c, ours["AP"][c], ref)


def test_vectorised_chunking_gives_same_result():
    from rcnn_cli.evaluation.voc import voc_match

    ds, d = random_case(5)
    full = voc_match(ds, d, 0.5)
    tiny = voc_match(ds, d, 0.5, chunk=7)
    for c in ds.classes:
        assert np.array_equal(full[c].tp, tiny[c].tp) and np.array_equal(full[c].fp, tiny[c].fp)


# ------------------------------------------------------------------ COCO through pycocotools


def _coco_files(tmp_path):
    rng = np.random.default_rng(3)
    images, anns, results = [], [], []
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    aid = 0
    for i in range(12):
        img_id = 100 + i
        images.append({"id": img_id, "file_name": f"im{i}.jpg", "width": 320, "height": 240})
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 200), rng.uniform(0, 150)
            w, h = rng.uniform(8, 120), rng.uniform(8, 90)
            cat = int(rng.choice([7, 3]))
            aid += 1
            anns.append({"id": aid, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": 0})
            for _ in range(3):
                jit = rng.normal(0, 0.1, 4) * [w, h, w, h]
                results.append({"image_id": img_id, "category_id": cat if rng.random() < 0.8 else 10 - cat,
                                "bbox": [float(v) for v in np.array([x, y, w, h]) + jit],
                                "score": float(rng.random())})
        results.append({"image_id": img_id, "category_id": 7, "bbox": [10.0, 10.0, 30.0, 30.0],
                        "score": float(rng.random())})
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def test_coco_metric_equals_pycocotools_run_directly(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import read_detections

    gt_path, res_path = _coco_files(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ds = load_dataset(gt_path)
    ours = evaluate(ds, read_detections(res_path, ds), metric="coco")
    for key, value in zip(("mAP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
        expected = None if value < 0 else float(value)
        assert ours[key] == (pytest.approx(expected, abs=1e-12) if expected is not None else None), key
    assert ours["mAP"] > 0.2  # a meaningful case, not all zeros
    # and through the CLI
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(gt_path), "--detections", str(res_path), "--metric", "coco", "--json", str(tmp_path / "m.json")])
    assert exc.value.code == 0
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["metric"] == "coco" and out["mAP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert out["AP50"] == pytest.approx(ev.stats[1], abs=1e-12) and set(out["AP"]) == {"cat", "dog"}


# ------------------------------------------------------------------ CLI on the shapes dataset


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_cli_perfect_detections_all_formats(shapes_root, tmp_path, capsys, monkeypatch):
    ds = load_dataset(shapes_root, "test")
    perfect = [ImageDetections(r.image_id, r.boxes, np.linspace(0.9, 0.5, len(r.labels)), r.labels) for r in ds.records]
    with open_writer(tmp_path / "d.jsonl", "jsonl", ds.classes) as w:
        for d in perfect:
            w.write(d)
    with open_writer(tmp_path / "voc", "voc", ds.classes, split="test") as w:
        for d in perfect:
            w.write(d)
    for source in (tmp_path / "d.jsonl", tmp_path / "voc"):
        code, out, _ = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", str(source),
                             "--metric", "voc12", "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "plots")],
                            capsys)
        assert code == 0 and "mAP" in out and "100.00" in out
        m = json.loads((tmp_path / "m.json").read_text())
        assert m["metric"] == "voc12" and m["mAP"] == 1.0 and set(m["AP"]) == set(ds.classes)
        assert m["num_images"] == len(ds) and m["num_detections"] == sum(len(r.labels) for r in ds.records)
    assert (tmp_path / "m.json.config.json").exists()
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == sorted(
        [f"pr_{c}.png" for c in ds.classes] + ["pr_overview.png"])
    # stdin, empty input: valid, all AP 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, _ = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", "-"], capsys)
    assert code == 0 and "0.00" in out
    # unknown image -> one-line error, exit 2; --ignore-unknown -> warning
    (tmp_path / "bad.jsonl").write_text('{"image_id": "nope", "detections": [{"label": "star", "score": 1, "box": [0,0,5,5]}]}\n')
    code, _, err = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", str(tmp_path / "bad.jsonl")], capsys)
    assert code == 2 and "not in the dataset" in err and "Traceback" not in err
    code, _, err = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", str(tmp_path / "bad.jsonl"),
                         "--ignore-unknown"], capsys)
    assert code == 0
    code, _, err = _cli(["evaluate", str(shapes_root), "--detections", str(tmp_path / "bad.jsonl")], capsys)
    assert code == 2 and "--split" in err


# ------------------------------------------------------------------ bootstrap over the test images


def _duplicated(ds, d, weights):
    """The split with image i written ``weights[i]`` times (new ids), and its detections."""
    records, detections = [], {}
    for i, (r, w) in enumerate(zip(ds.records, weights)):
        for copy in range(int(w)):
            new = f"{r.image_id}#{copy}"
            records.append(rec(new, r.boxes, r.labels, r.difficult))
            if r.image_id in d:
                o = d[r.image_id]
                detections[new] = dets(new, o.boxes, o.scores, o.labels)
    return Dataset(Path("."), "test", ds.classes, records), detections


@pytest.mark.parametrize("seed", [0, 1])
def test_resampled_map_equals_evaluating_the_duplicated_split(seed):
    from rcnn_cli.evaluation.bootstrap import resampled_maps
    from rcnn_cli.evaluation.voc import voc_match

    ds, d = random_case(seed)
    # no tied scores (the devkit keeps input order on ties, which puts other detections between copies)
    d = {k: dets(k, v.boxes, np.asarray(v.scores) + 1e-4 * i + 1e-6 * np.arange(len(v)), v.labels)
         for i, (k, v) in enumerate(d.items())}
    rng = np.random.default_rng(seed)  # resampled_maps' first draw with this seed
    weights = np.bincount(rng.integers(0, len(ds), len(ds)), minlength=len(ds))
    for metric in ("voc07", "voc12"):
        ours = resampled_maps(voc_match(ds, d, 0.5), len(ds), 1, metric, seed=seed)[0]
        ref = evaluate(*_duplicated(ds, d, weights), metric)["mAP"]
        assert ours == pytest.approx(ref, abs=1e-12)


def test_bootstrap_interval_by_hand_and_a_perfect_detector():
    from rcnn_cli.evaluation.bootstrap import bootstrap_interval

    ci = bootstrap_interval(np.arange(101) / 100)  # percentiles 2.5 and 97.5 of 0, 0.01, ..., 1
    assert ci["low"] == pytest.approx(0.025) and ci["high"] == pytest.approx(0.975) and ci["resamples"] == 101
    ds = base_dataset()
    perfect = {"im1": dets("im1", [A, B, C], [0.9, 0.8, 0.7], ["cat"] * 3),
               "im2": dets("im2", [[5, 5, 50, 50]], [0.9], ["dog"])}
    r = evaluate(ds, perfect, "voc12", bootstrap=200)
    b = r["bootstrap"]["mAP"]
    assert (b["low"], b["high"], b["std"], b["resamples"]) == (1.0, 1.0, 0.0, 200)


def test_bootstrap_against_itself_and_against_a_worse_set():
    ds, d = random_case(4)
    r = evaluate(ds, d, "voc12", bootstrap=300, against=d)
    diff = r["bootstrap"]["difference"]
    assert r["against_mAP"] == r["mAP"] and (diff["low"], diff["high"], diff["better"]) == (0.0, 0.0, 0.0)
    worse = {k: dets(k, v.boxes[:1], v.scores[:1], v.labels[:1]) for k, v in d.items()}  # one detection per image
    r = evaluate(ds, d, "voc12", bootstrap=300, against=worse, seed=3)
    diff = r["bootstrap"]["difference"]
    assert r["mAP"] > r["against_mAP"] and diff["better"] > 0.95 and diff["low"] > 0
    again = evaluate(ds, d, "voc12", bootstrap=300, against=worse, seed=3)["bootstrap"]
    assert again == r["bootstrap"]  # the seed fixes the resamples


def test_cli_bootstrap_writes_the_interval_and_refuses_coco(shapes_root, tmp_path, capsys):
    ds = load_dataset(shapes_root, "test")
    with open_writer(tmp_path / "d.jsonl", "jsonl", ds.classes) as w:
        for r in ds.records:
            w.write(ImageDetections(r.image_id, r.boxes, np.linspace(0.9, 0.5, len(r.labels)), r.labels))
    code, out, _ = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", str(tmp_path / "d.jsonl"),
                         "--metric", "voc12", "--against", str(tmp_path / "d.jsonl"), "--json", str(tmp_path / "m.json")],
                        capsys)
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and "100.00 to 100.00" in out and "+0.00" in out
    assert m["bootstrap"]["mAP"]["resamples"] == 1000 and m["bootstrap"]["difference"]["better"] == 0.0
    record = json.loads((tmp_path / "m.json.config.json").read_text())
    assert "seed" in json.dumps(record) and "bootstrap" in json.dumps(record)
    for extra in (["--metric", "coco", "--bootstrap", "100"], ["--bootstrap", "-5"]):
        code, _, err = _cli(["evaluate", str(shapes_root), "--split", "test", "--detections", str(tmp_path / "d.jsonl"),
                             *extra], capsys)
        assert code == 2 and "--bootstrap" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
