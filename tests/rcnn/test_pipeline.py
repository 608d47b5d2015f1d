"""`rcnn pipeline` resumes by configuration; fine-tuning writes valid extractor weights and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rcnn_cli.errors import UserError
from rcnn_cli.rcnn.pipeline import PipelineConfig, config_hash, run_pipeline

TINY = dict(train_images=8, test_images=4, image_size=128, max_size=128, min_size=8, limit=20, workers=1,
            warp_size=32, padding=4, batch_size=64, weights="none", device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread (the test machine is shared; OpenMP spinning on busy cores is slow) and
    flushed denormals (random-init weights produce them); both restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def _statuses(metrics):
    return {k: v["status"] for k, v in metrics["stages"].items()}


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, _one_thread):
    run = tmp_path_factory.mktemp("run")
    metrics = run_pipeline(PipelineConfig(**TINY), run, progress=False)
    return run, metrics


def test_pipeline_runs_every_stage_and_records(first_run):
    run, metrics = first_run
    assert set(_statuses(metrics).values()) == {"ran"}
    assert list(metrics["stages"]) == ["data", "propose-train", "propose-test", "features-train", "features-test",
                                       "train-svm", "train-bbox", "detect", "evaluate"]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk["mAP"]) == {"voc07", "voc12"} and 0.0 <= on_disk["mAP"]["voc12"] <= 1.0
    assert on_disk["voc12"]["num_images"] == 4
    ci = on_disk["voc12"]["bootstrap"]["mAP"]  # the interval over the test images, with the figure
    assert ci["resamples"] == 1000 and 0.0 <= ci["low"] <= ci["high"] <= 1.0 and "bootstrap" not in on_disk["voc07"]
    for name in ("proposals_trainval.h5", "proposals_test.h5", "features_trainval.h5", "features_test.h5",
                 "model/config.json", "model/svm.safetensors", "model/bbox.safetensors", "detections_test.jsonl"):
        assert (run / name).exists(), name
    rec = json.loads((run / "stages" / "train-svm.json").read_text())
    assert rec["config"]["C"] == 0.001 and rec["hash"] == config_hash(rec["config"])
    cfg = json.loads((run / "model" / "config.json").read_text())["model"]
    assert cfg["proposals"]["max_size"] == 128 and cfg["proposals"]["limit"] == 20 and cfg["warp_size"] == 32
    # every detection line is an image of the test split
    ids = [json.loads(x)["image_id"] for x in (run / "detections_test.jsonl").read_text().splitlines()]
    assert sorted(ids) == [f"test_{k:05d}" for k in range(4)]


def test_pipeline_rerun_skips_and_config_change_reruns_downstream(first_run):
    run, _ = first_run
    feats = run / "features_trainval.h5"
    mtime = feats.stat().st_mtime_ns
    again = run_pipeline(PipelineConfig(**TINY), run, progress=False)
    assert set(_statuses(again).values()) == {"skipped"}
    assert feats.stat().st_mtime_ns == mtime
    # a new C: only the SVMs and what depends on them run again
    changed = run_pipeline(PipelineConfig(**dict(TINY, C=0.01)), run, progress=False)
    st = _statuses(changed)
    assert all(st[s] == "skipped" for s in ("data", "propose-train", "propose-test", "features-train", "features-test"))
    assert all(st[s] == "ran" for s in ("train-svm", "train-bbox", "detect", "evaluate"))
    assert feats.stat().st_mtime_ns == mtime
    assert json.loads((run / "model" / "config.json").read_text())["model"]["svm"]["C"] == 0.01
    # a stage whose output vanished runs again even though its record is there
    (run / "detections_test.jsonl").unlink()
    st = _statuses(run_pipeline(PipelineConfig(**dict(TINY, C=0.01)), run, progress=False))
    assert st["train-svm"] == "skipped" and st["detect"] == "ran"


def test_detect_command_matches_cached_detections(first_run, tmp_path):
    """`rcnn detect` on the test images (same proposals) reproduces the pipeline's cached-feature detections."""
    from rcnn_cli.io.detections import read_detections
    from rcnn_cli.workflows.detect import detect

    run, _ = first_run
    out = tmp_path / "d.jsonl"
    detect([str(run / "data")], run / "model", split="test", proposals=run / "proposals_test.h5", out=str(out),
           device="cpu", progress=False)
    got, cached = read_detections(out), read_detections(run / "detections_test.jsonl")
    assert set(got) == set(cached)
    for k in got:
        a, b = got[k], cached[k]
        n = min(len(a), len(b), 5)
        if n:  # the top detections agree (features cached in float16)
            np.testing.assert_allclose(a.scores[:n], b.scores[:n], atol=2e-2)
            np.testing.assert_allclose(a.boxes[:n], b.boxes[:n], atol=1.0)


def test_finetune_weights_load_and_resume_exactly(first_run, tmp_path):
    from safetensors.torch import load_file

    from rcnn_cli.backbones import build_feature_extractor
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.rcnn.finetune import FinetuneConfig, finetune

    run, _ = first_run
    ds = load_dataset(run / "data", "trainval")
    props = run / "proposals_trainval.h5"
    base = dict(backbone="efficientnet_lite0", weights="none", warp_size=32, padding=4, batch_size=8, fg_per_batch=2, seed=3,
                device="cpu", checkpoint_every=2)
    a = finetune(ds, props, tmp_path / "a", FinetuneConfig(max_iters=4, **base), progress=False)
    assert a["iterations"] == 4
    finetune(ds, props, tmp_path / "b", FinetuneConfig(max_iters=2, **base), progress=False)
    finetune(ds, props, tmp_path / "b", FinetuneConfig(max_iters=4, **base), resume=True, progress=False)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    # the weights file is exactly the feature extractor's state dict and loads as --weights
    fe = build_feature_extractor("efficientnet_lite0", tmp_path / "a" / "model.safetensors")
    sd = fe.state_dict()
    assert set(sd) == set(wa)
    for k in sd:
        assert (sd[k] == wa[k]).all()
    ref = build_feature_extractor("efficientnet_lite0", "none").state_dict()
    assert any(not (ref[k] == wa[k]).all() for k in wa if ref[k].is_floating_point())  # training changed it
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "iter"]  # the trainer's metrics.jsonl
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_settings_are_chosen_from_the_data_unless_given(shapes_root, tmp_path):
    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.fitting import data_stats
    from rcnn_cli.rcnn.pipeline import UNFITTED, resolve_settings

    ds = data_stats(load_dataset(shapes_root, "trainval"))
    built_in, f = resolve_settings(PipelineConfig(weights="none"), tmp_path, ds)
    assert built_in.method == "selective-search" and "built-in data" in f.reasons["method"]
    assert built_in.warp_size == 64 and built_in.padding == 6 and built_in.layer == "grid" and "weights" not in f.values
    mine, f = resolve_settings(PipelineConfig(dataset=str(shapes_root)), tmp_path, ds)
    assert mine.method == "rpn" and mine.rpn_model is None  # a Faster R-CNN is trained first
    assert mine.weights == str(tmp_path / "backbone.safetensors") and "every layer" in f.reasons["weights"]
    mlp, f = resolve_settings(PipelineConfig(dataset=str(shapes_root), faster_head="mlp"), tmp_path, ds)
    assert mlp.weights == "imagenet" and "only its trunk" in f.reasons["weights"]  # its MLP head: ImageNet's
    hog, _ = resolve_settings(PipelineConfig(dataset=str(shapes_root), backbone="hog"), tmp_path, ds)
    assert hog.method == "selective-search" and hog.weights == "imagenet"
    given, f = resolve_settings(PipelineConfig(dataset=str(shapes_root), method="selective-search", warp_size=96,
                                               weights="none"), tmp_path, ds)
    assert (given.method, given.warp_size, given.padding, given.weights) == ("selective-search", 96, 10, "none")
    assert {"method", "warp_size", "weights"}.isdisjoint(f.values)
    classic, f = resolve_settings(PipelineConfig(dataset=str(shapes_root), limit=7, fit=False), tmp_path, ds)
    assert f.values == {} and classic.limit == 7
    assert resolve_settings(PipelineConfig(rpn_model="RUN", fit=False), tmp_path, ds)[0].method == "rpn"
    assert {k: getattr(classic, k) for k in UNFITTED if k != "limit"} == {k: v for k, v in UNFITTED.items() if k != "limit"}
    assert classic.lam == 1000.0 and built_in.lam is None and mine.lam is None  # None: cross-validated in train-bbox
    assert classic.top_k == mine.top_k == 100  # the shapes have a few objects per image: 100 either way
    mine, f = resolve_settings(PipelineConfig(dataset=str(shapes_root)), tmp_path, ds)
    assert "most crowded training image" in f.reasons["top_k"]
    assert PipelineConfig(top_k=None).top_k is None and resolve_settings(
        PipelineConfig(dataset=str(shapes_root), top_k=7), tmp_path, ds)[0].top_k == 7  # given: kept
    with pytest.raises(UserError, match="--top-k must be"):
        PipelineConfig(top_k=0)
    with pytest.raises(UserError, match="--faster-head must be"):
        PipelineConfig(faster_head="big")
    with pytest.raises(UserError, match="--method must be"):
        PipelineConfig(method="edge-boxes")
    with pytest.raises(UserError, match="--warp-size 8: must be at least 16"):
        PipelineConfig(warp_size=8)
    with pytest.raises(UserError, match="--time-budget"):
        PipelineConfig(time_budget="soon")


def test_pipeline_trains_its_own_faster_rcnn_and_uses_its_rpn_and_trunk(shapes_root, tmp_path, monkeypatch):
    """`rcnn pipeline DATASET` alone: stage faster trains a Faster R-CNN into RUN/faster (settings
    chosen from the data), its RPN proposes and its exported trunk computes the features; the record
    says what was chosen and why; a rerun skips everything."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.models import faster_rcnn
    from rcnn_cli.rcnn.features import load_features
    from rcnn_cli.proposals import load as load_proposals

    monkeypatch.setattr(faster_rcnn, "TRAIN_DEFAULTS", {"epochs": 1, "max_iters": 2, "warmup_iters": 1})
    settings = dict(dataset=str(shapes_root), limit=10, workers=1, warp_size=32, batch_size=64, device="cpu",
                    time_budget="1h", backbone="efficientnet_lite0")  # given: no larger one is measured
    run = tmp_path / "run"
    metrics = run_pipeline(PipelineConfig(**settings), run, progress=False)
    assert list(metrics["stages"])[:3] == ["faster", "export-backbone", "propose-train"]
    faster = json.loads((run / "faster" / "config.json").read_text())
    assert faster["model"]["trained_on"]["fitted"]["min_size"]["value"] == 480  # 30 cells of the stride-16 map
    assert faster["model"]["head"] == "backbone" and faster["model"]["box_batch_size_per_image"] == 64
    plan = metrics["time_budget"]  # the R-CNN stages' time estimated from the measured crops/s, the rest trains
    assert plan["crops_per_s"] > 0 and plan["faster_s"] == pytest.approx(3600 - plan["rcnn_estimate_s"], abs=0.1)
    assert faster["train"]["time_budget"] == pytest.approx(plan["faster_s"])
    with load_proposals(run / "proposals_test.h5") as p:
        assert p.attrs["method"] == "rpn" and int(p.attrs["post_nms_top_n"]) == 10
    with load_features(run / "features_test.h5") as store:
        assert store.attrs["weights_id"] == weights_id("efficientnet_lite0", run / "backbone.safetensors")
    rec = json.loads((run / "metrics.json.config.json").read_text())["config"]
    assert rec["method"] == "rpn" and rec["rpn_model"] == str(run / "faster")
    assert rec["sources"]["method"].startswith("chosen: a Faster R-CNN is trained first")
    assert rec["fitted"]["padding"] == {"value": 3, "reason": rec["fitted"]["padding"]["reason"]}
    assert metrics["time_budget"]["budget_s"] == 3600 and metrics["time_budget"]["within"]
    again = run_pipeline(PipelineConfig(**settings), run, progress=False)
    assert {v["status"] for v in again["stages"].values()} == {"skipped"}
    assert again["mAP"] == metrics["mAP"]


class _Stop(Exception):
    pass


def test_pipeline_faster_stage_buys_the_backbone_its_budget_fits(shapes_root, tmp_path, monkeypatch):
    """With a time budget and no --backbone, stage faster chooses its backbone as `rcnn faster train`
    does, each candidate within what the R-CNN stages leave with it (slower crops leave less), and the
    R-CNN settings follow the one it trained; a given backbone is kept and nothing is measured."""
    from rcnn_cli.backbones import get_spec
    from rcnn_cli.fitting import Fitted
    from rcnn_cli.models import faster_rcnn
    from rcnn_cli.rcnn import pipeline as P

    rates = {"efficientnet_lite0": 400.0, "efficientnet_lite1": 300.0, "efficientnet_lite2": 200.0}
    monkeypatch.setattr(P, "crops_per_second", lambda cfg, probe=128, cache_dir=None: rates[cfg.backbone])
    calls, seen = [], {}

    def fake_train(dataset, split, out, model, tc, *, given, budget_for=None, **kw):
        stage = {n: budget_for(n) for n in ("efficientnet_lite1", "efficientnet_lite2")} if budget_for else {}
        calls.append((set(given), tc.time_budget, stage))
        chosen = "efficientnet_lite2" if budget_for else model.backbone
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"stub")
        fitted = {"backbone": {"value": chosen, "reason": "its schedule fits"}} if budget_for else {}
        (out / "config.json").write_text(json.dumps({"model": {"backbone": chosen, "trained_on": {"fitted": fitted}}}))
        return {}

    def stop(r):
        seen.update(cfg=r.cfg, budget=r.budget)
        raise _Stop

    monkeypatch.setattr(faster_rcnn, "train_faster", fake_train)
    monkeypatch.setattr(P, "_export_stage", stop)
    tables = []  # what the pipeline's table of chosen settings shows
    monkeypatch.setattr(Fitted, "print", lambda self, title: tables.append(self.record()))
    settings = dict(dataset=str(shapes_root), limit=10, workers=1, device="cpu", time_budget="1h")
    with pytest.raises(_Stop):
        run_pipeline(PipelineConfig(**settings), tmp_path / "run", progress=False)
    given, lite0_s, stage = calls[0]
    assert "backbone" not in given
    cfg = seen["cfg"]
    rest = {n: 3600 - b for n, b in [("efficientnet_lite0", lite0_s), *stage.items()]}  # the R-CNN stages' estimate
    assert rest["efficientnet_lite0"] * 400 == pytest.approx(rest["efficientnet_lite1"] * 300, rel=2e-2)
    assert rest["efficientnet_lite0"] * 400 == pytest.approx(rest["efficientnet_lite2"] * 200, rel=2e-2)
    assert lite0_s > stage["efficientnet_lite1"] > stage["efficientnet_lite2"]  # slower crops leave less
    assert cfg.backbone == "efficientnet_lite2" and cfg.layer in get_spec("efficientnet_lite2").layers
    assert seen["budget"]["backbone"] == "efficientnet_lite2"
    assert seen["budget"]["faster_s"] == stage["efficientnet_lite2"]
    assert seen["budget"]["crops_per_s"] == 200.0
    assert tables[-1]["backbone"] == {"value": "efficientnet_lite2", "reason": "stage faster's: its schedule fits"}

    calls.clear()
    with pytest.raises(_Stop):
        run_pipeline(PipelineConfig(**dict(settings, backbone="efficientnet_lite0")), tmp_path / "given",
                     progress=False)
    assert calls == [({"backbone"}, lite0_s, {})] and seen["cfg"].backbone == "efficientnet_lite0"
    assert "backbone" not in tables[-1]  # given, not chosen


def test_pipeline_cli_errors_are_one_line_and_write_nothing(shapes_root, tmp_path, capsys):
    from rcnn_cli.cli import main

    for flags, message in [(["--defaults", "paper"], "--defaults must be data or classic"),
                           (["--from", str(tmp_path / "no_run"), "--weights", "none"], "not a finished"),
                           (["--time-budget", "soon"], "expected a duration")]:
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as e:
            main(["pipeline", str(shapes_root), "--out", str(out), "--no-progress", *flags])
        assert e.value.code == 2 and message in capsys.readouterr().err
        assert not (out / "metrics.json").exists() and not list(out.glob("*.h5"))


def test_rcnn_seconds_by_hand():
    from rcnn_cli.rcnn.pipeline import RCNN_MARGIN, rcnn_seconds

    cfg = PipelineConfig(limit=100, warp_size=64)
    # per image: 100 warps + a 320 x 256 image = 20 warps of 64 x 64; 10 images at 60 crops/s, x 1.5
    assert rcnn_seconds(cfg, 10, 320 * 256, 60.0) == pytest.approx(RCNN_MARGIN * 10 * 120 / 60) == 30.0
