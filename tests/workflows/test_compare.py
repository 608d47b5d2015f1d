"""`rcnn compare`: the shared timing function, the table's arithmetic, outputs, resume, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rcnn_cli.workflows import compare as C
from rcnn_cli.workflows import timing as T
from rcnn_cli.boxes import ImageDetections
from rcnn_cli.errors import UserError

#: Tiny settings (seconds on one core): 8/4 images of 128 px, 20 proposals, random-init backbone.
TINY = {
    "data": {"train": 8, "test": 4, "size": 128},
    "model": {"weights": "none"},
    "proposals": {"max_size": 128, "min_size": 8, "limit": 20, "workers": 1},
    "rcnn": {"warp_size": 32, "padding": 4},
    "fast": {"min_size": 128, "max_size": 128, "epochs": 1, "max_iters": 3, "representation_size": 64,
             "warmup_iters": 1, "lr_steps": []},
    "faster": {"min_size": 128, "max_size": 128, "epochs": 1, "max_iters": 3, "warmup_iters": 1, "lr_steps": [],
               "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
               "rpn_post_nms_top_n_test": 50},
    "yolo": {"input_size": 64, "grid": 2, "epochs": 1, "max_iters": 2, "warmup_iters": 1, "lr_steps": [],
             "batch_size": 2},
    "hog": {"warp_size": 32, "padding": 4},
    "overfeat": {"input_size": 64, "epochs": 1, "max_iters": 2, "warmup_iters": 1, "lr_steps": [], "batch_size": 2},
    "timing": {"images": 2},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


# ---------------------------------------------------------------------------------- timing


class SleepyDetector:
    """Sleeps ``proposals`` then ``network`` seconds per call and reports them; the first call sleeps
    ``first`` extra seconds (a cold start); ``slow`` maps an image id to a slower network time."""

    def __init__(self, proposals=0.02, network=0.03, first=0.3, slow=None, n_boxes=7):
        self.proposals_s, self.network_s, self.first, self.slow = proposals, network, first, slow or {}
        self.calls = []
        self.n_boxes = n_boxes

    def propose(self, image, image_id):
        time.sleep(self.proposals_s)
        return np.zeros((self.n_boxes, 4), np.float32)

    def __call__(self, image, image_id):
        if not self.calls:
            time.sleep(self.first)
        t0 = time.perf_counter()
        self.calls.append(image_id)
        boxes = self.propose(image, image_id)
        t1 = time.perf_counter()
        time.sleep(self.slow.get(image_id, self.network_s))
        t2 = time.perf_counter()
        return ImageDetections(image_id, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [],
                               timings={"proposals": t1 - t0, "network": t2 - t1, "post": 0.0},
                               num_proposals=len(boxes))


def test_time_detector_excludes_warmup_and_takes_medians():
    images = [(f"im{i}", None) for i in range(3)]
    det = SleepyDetector(slow={"im2": 0.25})  # one slow image: the median over images ignores it
    r = T.time_detector(det, images, warmup=1, repeats=1)
    assert det.calls == ["im0", "im0", "im1", "im2"]  # the warm-up call, then each image once
    med = r["median"]
    assert med["network"] == pytest.approx(0.03, abs=0.012)
    assert med["proposals"] == pytest.approx(0.02, abs=0.012)
    assert med["total"] == pytest.approx(0.05, abs=0.02)  # neither the 0.3 s cold start nor the 0.25 s image
    assert med["without_proposals"] == pytest.approx(med["total"] - med["proposals"], abs=0.015)
    assert r["mean"]["network"] > 0.09  # the mean does see the slow image: (0.03 + 0.03 + 0.25) / 3
    assert [e["image_id"] for e in r["per_image"]] == ["im0", "im1", "im2"]
    assert r["per_image"][2]["network"] == pytest.approx(0.25, abs=0.03)
    assert r["proposals_per_image"] == 7 and all(e["proposals_count"] == 7 for e in r["per_image"])
    assert r["images"] == 3 and r["warmup"] == 1 and r["device"] == "cpu"
    assert r["threads"]["torch"] == 1 and r["threads"]["cpu_count"] >= 1


def test_time_detector_repeats_take_the_per_image_median():
    class OnceSlow(SleepyDetector):
        def __call__(self, image, image_id):
            self.network_s = 0.2 if len(self.calls) == 2 else 0.02  # the 2nd timed call is slow
            return super().__call__(image, image_id)

    det = OnceSlow(proposals=0.0, first=0.0)
    r = T.time_detector(det, [("a", None)], warmup=1, repeats=3)
    assert len(det.calls) == 4
    assert r["median"]["network"] == pytest.approx(0.02, abs=0.012)
    with pytest.raises(UserError):
        T.time_detector(det, [], warmup=1)


def test_speedups_arithmetic():
    sp = T.speedups({"rcnn": 10.0, "fast": 0.5, "faster": 0.04})
    assert sp == {"rcnn": 1.0, "fast": 20.0, "faster": pytest.approx(250.0)}
    assert T.speedups({"rcnn": None, "fast": 0.5}) == {"rcnn": None, "fast": None}
    assert T.speedups({"rcnn": 2.0, "fast": 0.0})["fast"] is None


def test_methods_budgets_and_overrides_are_checked():
    assert C.parse_methods("faster,rcnn") == ["rcnn", "faster"]
    assert C.parse_methods(["Fast-RCNN"]) == ["fast"]
    assert C.parse_methods("yolo,faster,HOG-SVM,overfeat") == ["overfeat", "hog", "faster", "yolo"]  # the lecture's order
    with pytest.raises(UserError, match="unknown method 'ssd'"):
        C.parse_methods("rcnn,ssd")
    with pytest.raises(UserError, match="unknown budget"):
        C.budget_settings("huge")
    with pytest.raises(UserError, match="fast.epoch"):
        C.budget_settings("quick", {"fast": {"epoch": 3}})
    s = C.budget_settings("quick", C.parse_set(["fast.epochs=3", "proposals.mode=quality", "faster.lr_steps=[2]"]))
    assert s["fast"]["epochs"] == 3 and s["proposals"]["mode"] == "quality" and s["faster"]["lr_steps"] == [2]
    assert C.budget_settings("quick")["proposals"]["mode"] == "fast"  # the module's budgets are not modified
    full = C.budget_settings("full")
    assert full["proposals"]["limit"] == 2000 and full["fast"]["min_size"] == 600 and full["faster"]["max_size"] == 1000
    with pytest.raises(UserError, match="SECTION.KEY"):
        C.parse_set(["epochs=3"])


# ------------------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def compared(tmp_path_factory, _one_thread):
    out = tmp_path_factory.mktemp("cmp")
    report = C.run_compare(None, out=out, progress=False, device="cpu", overrides=TINY)
    return out, report


def test_compare_outputs(compared):
    out, report = compared
    data = json.loads((out / "compare.json").read_text())
    assert data["methods"] == ["overfeat", "hog", "rcnn", "fast", "faster", "yolo"] and data["budget"] == "quick"
    assert data["settings"]["proposals"]["limit"] == 20 and data["settings"]["rcnn"]["warp_size"] == 32
    assert data["overrides"]["model"] == {"weights": "none"}
    keys = [r["key"] for r in data["rows"]]
    for k in ("train_seconds", "test_without_proposals", "test_with_proposals", "speedup_without_proposals",
              "speedup_with_proposals", "map_voc07", "map_voc12", "recall_0.5", "recall_0.7", "proposals_per_image",
              "input"):
        assert k in keys, k
    rows = {r["key"]: r for r in data["rows"]}
    res = data["results"]
    assert rows["proposal_source"]["text"]["yolo"] == "none (2 boxes per cell)"
    assert rows["proposal_seconds"]["text"]["yolo"] == "in network" and rows["input"]["text"]["hog"].startswith("HOG")
    scales = json.loads((out / "overfeat" / "config.json").read_text())["model"]["scales"]
    assert res["overfeat"]["scales"] == scales and len(scales) >= 3
    assert rows["input"]["text"]["overfeat"] == f"64-px windows, {len(scales)} scales"
    assert rows["proposal_source"]["text"]["overfeat"].startswith("none")
    assert res["hog"]["recall"] == res["rcnn"]["recall"]  # the same proposals files
    assert "HOG + SVM" in (out / "compare.md").read_text() and "lecture: YOLO" in (out / "compare.md").read_text()
    for m in C.METHODS:
        t = res[m]["test_seconds_per_image"]
        assert rows["test_with_proposals"]["values"][m] == t["with_proposals"] > 0
        assert rows["speedup_with_proposals"]["values"][m] == pytest.approx(
            res["rcnn"]["test_seconds_per_image"]["with_proposals"] / t["with_proposals"])
        assert rows["speedup_without_proposals"]["values"][m] == pytest.approx(
            res["rcnn"]["test_seconds_per_image"]["without_proposals"] / t["without_proposals"])
        assert 0.0 <= res[m]["mAP"]["voc12"] <= 1.0 and res[m]["train_seconds"] > 0
        low, high = rows["map_voc12_interval"]["values"][m]
        assert 0.0 <= low <= high <= 1.0 and rows["map_voc12_interval"]["text"][m] == f"{100 * low:.1f} to {100 * high:.1f}"
        assert res[m]["timing"]["images"] == 2 and res[m]["timing"]["warmup"] == 1
    assert rows["speedup_with_proposals"]["values"]["rcnn"] == 1.0
    # the same selective-search boxes for R-CNN and Fast R-CNN: same recall, same live count (<= limit 20)
    assert res["rcnn"]["recall"] == res["fast"]["recall"]
    n = res["rcnn"]["proposals_per_image"]
    assert 0 < n <= 20 and res["fast"]["proposals_per_image"] == n
    assert [e["proposals_count"] for e in res["rcnn"]["timing"]["per_image"]] == \
        [e["proposals_count"] for e in res["fast"]["timing"]["per_image"]]
    assert 0 < res["faster"]["proposals_per_image"] <= 50 and res["faster"]["recall"]["method"] == "rpn"
    fast_cfg = json.loads((out / "fast" / "config.json").read_text())["model"]
    assert Path(fast_cfg["proposals"]["file"]) == out / "rcnn" / "proposals_trainval.h5"
    assert fast_cfg["max_proposals"] == 20 and fast_cfg["min_size"] == 128
    assert json.loads((out / "faster" / "config.json").read_text())["model"]["rpn_post_nms_top_n_test"] == 50
    # the R-CNN mAP is the pipeline's
    assert res["rcnn"]["mAP"] == json.loads((out / "rcnn" / "metrics.json").read_text())["mAP"]
    md = (out / "compare.md").read_text()
    assert "| | Overfeat | HOG + SVM | R-CNN | Fast R-CNN | Faster R-CNN | YOLO v1 |" in md
    assert "R-CNN paper: region proposals + CNN features beat Overfeat" in md
    assert "| speedup vs R-CNN (with proposals) | " in md and " | 1.0x | " in md.split("speedup vs R-CNN (with")[1]
    assert "warp 32x32+4" in md and "128/128 px" in md and "top 20 per image" in md and "torch threads 1" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "compare.json.config.json").read_text())
    assert rec["command"] == "rcnn compare" and rec["config"]["settings"]["proposals"]["limit"] == 20


def test_compare_rerun_reuses_every_method(compared):
    out, first = compared
    watched = [out / "rcnn" / "model" / "svm.safetensors", out / "rcnn" / "features_trainval.h5",
               out / "fast" / "model.safetensors", out / "faster" / "model.safetensors",
               out / "faster" / "detections_test.jsonl", out / "stages" / "timing-rcnn.json",
               out / "overfeat" / "model.safetensors"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    again = C.run_compare(None, out=out, progress=False, device="cpu", overrides=TINY)
    assert {m: again["results"][m]["status"] for m in again["methods"]} == {m: "reused" for m in C.METHODS}
    assert all(s["status"] == "skipped" for s in again["stages"].values())
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    # recorded times and results come back unchanged
    for m in ("rcnn", "fast", "faster"):
        assert again["results"][m]["train_seconds"] == pytest.approx(first["results"][m]["train_seconds"])
        assert again["results"][m]["test_seconds_per_image"] == first["results"][m]["test_seconds_per_image"]
        assert again["results"][m]["mAP"] == first["results"][m]["mAP"]


def test_compare_setting_change_reruns_only_that_method(compared):
    out, _ = compared
    faster_model = out / "faster" / "model.safetensors"
    mtime = faster_model.stat().st_mtime_ns
    changed = {k: dict(v) for k, v in TINY.items()}
    changed["fast"]["rois_per_image"] = 32
    report = C.run_compare(None, out=out, progress=False, device="cpu", overrides=changed, methods="fast,faster")
    assert report["methods"] == ["fast", "faster"]
    assert report["results"]["fast"]["status"] == "ran" and report["results"]["faster"]["status"] == "reused"
    assert faster_model.stat().st_mtime_ns == mtime
    assert json.loads((out / "fast" / "config.json").read_text())["model"]["rois_per_image"] == 32
    assert report["results"]["fast"]["speedup"]["with_proposals"] is None  # no R-CNN in this table
    assert (out / "compare.md").read_text().splitlines()[2] == "| | Fast R-CNN | Faster R-CNN |"


def test_unknown_method_or_budget_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown method"):
        C.run_compare(None, out=tmp_path / "x", methods="rcnn,ssd")
    with pytest.raises(UserError, match="unknown budget"):
        C.run_compare(None, out=tmp_path / "y", budget="medium")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before any work


# ------------------------------------------------------------------------------------- CLI


def _cli(argv, capsys):
    from rcnn_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _sets(settings):
    return [x for section, values in settings.items() for key, value in values.items()
            for x in ("--set", f"{section}.{key}={json.dumps(value)}")]


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    tiny = {k: v for k, v in TINY.items() if k not in ("rcnn", "fast", "proposals")}
    code, stdout, err = _cli(["compare", "--out", str(out), "--methods", "faster", "--device", "cpu",
                              "--no-progress", "--timing-images", "1", *_sets(tiny)], capsys)
    assert code == 0, err
    assert "Faster R-CNN" in err and "test time / image (with proposals)" in err and "compare.json" in err
    data = json.loads((out / "compare.json").read_text())
    assert data["methods"] == ["faster"] and data["timing"]["images"] == 1
    assert data["settings"]["faster"]["max_iters"] == 3 and data["settings"]["timing"]["images"] == 1
    assert (out / "compare.md").is_file() and (out / "compare.png").is_file()
    assert not (out / "rcnn").exists()  # Faster R-CNN alone needs no selective search


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    code, _, err = _cli(["compare", "--out", str(tmp_path / "o"), "--methods", "rcnn,ssd"], capsys)
    assert code == 2 and "unknown method 'ssd'" in err
    code, _, err = _cli(["compare", "--out", str(tmp_path / "o"), "--budget", "medium"], capsys)
    assert code == 2 and "unknown budget" in err
    code, _, err = _cli(["compare", "--out", str(tmp_path / "o"), "--set", "fast.nope=1"], capsys)
    assert code == 2 and "fast.nope" in err


def test_interrupted_training_stage_resumes_only_with_the_same_config(tmp_path):
    from rcnn_cli.rcnn.pipeline import StageRunner

    st = StageRunner(tmp_path, progress=False)
    run = tmp_path / "fast"
    seen = []

    def crash(resume):
        seen.append(resume)
        (run / "checkpoint").mkdir(parents=True)
        (run / "marker").write_text("epoch 1")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        C._train_stage(st, "fast-train", {"epochs": 2}, run, crash)
    assert (tmp_path / "stages" / "fast-train.pending.json").is_file()

    def finish(resume):
        seen.append(resume)
        assert (run / "marker").read_text() == "epoch 1"  # not cleaned: the checkpoint is continued
        (run / "model.safetensors").write_text("w")
        return {"epochs": 2}

    assert C._train_stage(StageRunner(tmp_path, False), "fast-train", {"epochs": 2}, run, finish) == {"epochs": 2}
    assert seen == [False, True] and not (tmp_path / "stages" / "fast-train.pending.json").exists()

    def fresh(resume):
        seen.append(resume)
        assert not (run / "marker").exists()  # another configuration starts from a clean folder
        run.mkdir(parents=True, exist_ok=True)
        (run / "model.safetensors").write_text("w2")
        return {}

    C._train_stage(StageRunner(tmp_path, False), "fast-train", {"epochs": 3}, run, fresh)
    assert seen == [False, True, False]
