"""Results a user can trust: exact resume of the recorded run, safe interrupts, one class list,
settings files that say what they mean, model files that never run code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from rcnn_cli.cli import main
from rcnn_cli.data.inputs import load_dataset
from rcnn_cli.errors import Interrupted, UserError

RCNN = [sys.executable, "-c", "from rcnn_cli.entry import main; main()"]
TINY = ["--min-size", "64", "--max-size", "96", "--weights", "none", "--no-progress"]


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def _record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.fixture(scope="module")
def one_iteration_run(shapes_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trust") / "run"
    assert _cli(["faster", "train", shapes_root, "--out", run, "--max-iters", "1", *TINY]) == 0
    return run


def test_resume_refuses_a_flag_that_changes_the_run(shapes_root, one_iteration_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_iteration_run, run)
    before = (run / "config.json").read_text()
    assert _cli(["faster", "train", shapes_root, "--out", run, "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5: the run in" in err and "recorded with 0.01" in err and "--resume continues it exactly" in err
    assert _cli(["faster", "train", shapes_root, "--out", run, "--resume", "--epochs", "3"]) == 2
    assert _cli(["faster", "train", shapes_root, "--out", run, "--resume", "--config", run / "config.json"]) == 2
    assert (run / "config.json").read_text() == before
    # the same value again, or a setting of how it runs (not what it computes), is no change
    assert _cli(["faster", "train", shapes_root, "--out", run, "--resume", "--lr", "0.01", "--workers", "0"]) == 0
    after = _record(run)
    assert after["train"]["epochs"] == _record(one_iteration_run)["train"]["epochs"]
    assert after["train"]["lr_steps"] == _record(one_iteration_run)["train"]["lr_steps"]
    assert after["sources"]["epochs"] == _record(one_iteration_run)["sources"]["epochs"]


def _wait_for_iterations(run: Path, n: int, proc: subprocess.Popen, limit: float = 120) -> None:
    start = time.time()
    while time.time() - start < limit:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and sum('"iter"' in ln for ln in metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.slow
def test_sigint_then_resume_continues_the_recorded_schedule_exactly(shapes_root, tmp_path):
    """SIGINT a real `rcnn faster train` (fitted schedule): one line, exit 130; `--resume` keeps the
    recorded epochs and lr steps, and its weights equal an uninterrupted run's."""
    args = ["faster", "train", str(shapes_root), "--log-every", "1", "--max-iters", "24", *TINY]
    straight = subprocess.run([*RCNN, *args, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "b"
    proc = subprocess.Popen([*RCNN, *args, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_iterations(run, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = next(ln for ln in err.splitlines() if ln.startswith("interrupted:"))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert 3 <= state["iteration"] < 24
    assert f"stopped at iteration {state['iteration']} of 24" in line and "resume with: rcnn faster train" in line
    assert line.rstrip().endswith("--resume") and "Traceback" not in err
    before = _record(run)
    assert before["sources"]["epochs"].startswith("chosen:")  # the fitted schedule
    resumed = subprocess.run([*RCNN, "faster", "train", str(shapes_root), "--out", str(run), "--resume",
                              "--no-progress"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after = _record(run)
    for key in ("epochs", "lr_steps", "lr", "seed", "max_iters", "batch_size"):
        assert after["train"][key] == before["train"][key] == _record(tmp_path / "a")["train"][key], key
    assert after["sources"]["epochs"] == before["sources"]["epochs"]
    assert after["model"] == {**_record(tmp_path / "a")["model"], "trained_on": after["model"]["trained_on"]}
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert set(a) == set(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_sigint_while_starting_is_one_line(tmp_path):
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'rcnn_cli.cli':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from rcnn_cli.entry import main\n"
            "sys.argv = ['rcnn', '--help']\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 130
    assert result.stderr == "interrupted while starting: nothing was done\n"


def test_sigint_during_detect_keeps_the_finished_lines(tmp_path, monkeypatch):
    from PIL import Image

    from rcnn_cli.cli import _interrupted
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import DetectOutput, run_inference
    from rcnn_cli.boxes import ImageDetections
    from rcnn_cli.io.detections import read_detections

    inputs = []
    for i in range(5):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(tmp_path / f"im{i}.png")
        inputs.append(ImageInput(f"im{i}", tmp_path / f"im{i}.png"))

    def detect(image, image_id):
        if image_id == "im3":
            raise KeyboardInterrupt
        return ImageDetections(image_id, np.array([[1, 2, 10, 12]], np.float32), np.array([0.9], np.float32), ["a"])

    out = tmp_path / "dets.jsonl"
    with pytest.raises(Interrupted) as e:
        run_inference(detect, inputs, DetectOutput(out), classes=["a"], progress=False)
    partial = tmp_path / "dets.jsonl.partial"
    assert not out.exists() and partial.is_file()
    lines = partial.read_text().splitlines()
    assert [json.loads(ln)["image_id"] for ln in lines] == ["im0", "im1", "im2"]
    assert json.loads(lines[0])["detections"][0]["box"] == [1, 2, 10, 12]
    assert _interrupted(e.value, []) == f"3 images' detections kept in {partial} (complete lines); {out} was not written"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_evaluation_knows_every_class_of_the_dataset(shapes_root, tmp_path, capsys):
    """A guess of a class absent from the test split is a false positive of a known class, not an error."""
    root = tmp_path / "voc"
    shutil.copytree(shapes_root, root)
    test = load_dataset(root, "test")
    absent = sorted(set(load_dataset(root).classes) - {lab for r in test.records for lab in r.labels})
    keep = [r for r in test.records if absent or "star" not in r.labels]
    if not absent:  # make one: a test split without stars
        absent = ["star"]
        (root / "ImageSets" / "Main" / "nostar.txt").write_text("".join(f"{r.image_id}\n" for r in keep))
    split = "test" if keep == test.records else "nostar"
    lines = []
    for r in load_dataset(root, split).records:
        dets = [{"label": lab, "score": 0.9, "box": [float(v) for v in box]} for box, lab in zip(r.boxes, r.labels)]
        dets.append({"label": absent[0], "score": 0.95, "box": [0.0, 0.0, 5.0, 5.0]})
        lines.append(json.dumps({"image_id": r.image_id, "detections": dets}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    assert _cli(["evaluate", root, "--split", split, "--detections", tmp_path / "d.jsonl", "--json",
                 tmp_path / "m.json"]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["mAP"] == pytest.approx(1.0)  # every true box found; the absent class is left out of mAP
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image_id": keep[0].image_id, "detections": [
        {"label": "hexagon", "score": 0.5, "box": [0, 0, 4, 4]}]}) + "\n")
    assert _cli(["evaluate", root, "--split", split, "--detections", tmp_path / "bad.jsonl"]) == 2
    assert "hexagon" in capsys.readouterr().err


def test_a_settings_file_with_an_unknown_key_is_refused(shapes_root, tmp_path, capsys):
    (tmp_path / "f.yaml").write_text("epochz: 3\nlr: 0.02\n")
    assert _cli(["faster", "train", shapes_root, "--out", tmp_path / "run", "--config", tmp_path / "f.yaml", *TINY]) == 2
    assert "unknown setting 'epochz' (did you mean 'epochs'?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_labelme_folder_with_a_broken_file_is_read_and_the_file_named(tmp_path, caplog):
    import logging

    for name in ("a", "c"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"imagePath": f"{name}.png", "imageWidth": 40,
                                                           "imageHeight": 30, "shapes": [
            {"label": "cat", "points": [[1, 2], [11, 12]], "shape_type": "rectangle"}]}))
    (tmp_path / "0broken.json").write_text("{\"imagePath\": ")
    caplog.set_level(logging.WARNING, logger="rcnn")
    ds = load_dataset(tmp_path)
    assert ds.format == "labelme" and [r.image_id for r in ds.records] == ["a", "c"]
    assert "0broken.json: malformed JSON" in caplog.text and "skipped" in caplog.text


def test_a_pickled_pth_for_init_is_refused_without_running_it(tmp_path):
    import torch

    from rcnn_cli.models.faster_rcnn import init_state

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint of tensors"):
        init_state(str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_detect_without_a_model_offline_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    Image.new("RGB", (64, 48)).save(tmp_path / "photo.jpg")
    assert _cli(["detect", tmp_path / "photo.jpg"]) == 2
    err = capsys.readouterr().err
    error = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "--model coco" in error[0] and "rcnn faster train" in error[0]


def test_detect_without_a_model_uses_the_cached_coco_checkpoint(tmp_path, monkeypatch):
    """The path end to end with an untrained torchvision model where the weights API caches it."""
    import torch
    import torchvision

    from rcnn_cli.models.pretrained import cached_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = cached_weights("coco")
    assert path.is_relative_to(tmp_path / "torch")
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    from PIL import Image

    Image.new("RGB", (80, 64), (200, 30, 30)).save(tmp_path / "photo.jpg")
    out = tmp_path / "d.jsonl"
    assert _cli(["detect", tmp_path / "photo.jpg", "--out", out, "--score-threshold", "0", "--no-progress"]) == 0
    line = json.loads(out.read_text())
    record = json.loads(Path(str(out) + ".config.json").read_text())
    assert line["image_id"] == "photo" and record["config"]["model"] == "coco" and record["config"]["kind"] == "coco"
    from rcnn_cli.registry import load_detector

    with load_detector("coco", device="cpu") as det:
        assert len(det.classes) == 80 and det.classes[0] == "person" and "N/A" not in det.classes
        assert det.settings()["weights"] == str(path)
    assert {d["label"] for d in line["detections"]} <= set(det.classes)
    from rcnn_cli.registry import PRETRAINED_NAMES
    from rcnn_cli.models.pretrained import PRETRAINED

    assert PRETRAINED_NAMES == tuple(PRETRAINED)  # the names --model knows are the ones that load
