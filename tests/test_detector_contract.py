"""The one detector contract: run directories of every kind (also those written before format 2)
load through one function, detect through one loop and one command, with the same boxes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rcnn_cli
from rcnn_cli.cli import main
from rcnn_cli.detector import DetectConfig, Detector
from rcnn_cli.registry import load_detector
from rcnn_cli.errors import UserError
from rcnn_cli.io.runs import read_run

OLD_RUNS = Path(__file__).parent / "fixtures" / "runs_e8b1e22"
EXPECTED = json.loads((OLD_RUNS / "expected.json").read_text())
IMAGES = sorted((OLD_RUNS / "images").glob("*.jpg"))


class _Proposals:
    """The test images' proposals as the fixture recorded them (a reader of the proposals API)."""

    def __init__(self, boxes: dict):
        self._boxes = {k: np.asarray(v, np.float32) for k, v in boxes.items()}

    def __contains__(self, image_id):
        return image_id in self._boxes

    def boxes(self, image_id):
        return self._boxes[image_id]


def _options(kind):
    if kind == "faster":
        return {"config": DetectConfig(score_threshold=0.001)}
    return {"proposals": _Proposals(EXPECTED["proposals"])}


@pytest.mark.parametrize("kind", ["rcnn", "fast", "faster"])
def test_runs_written_before_format_2_load_and_detect_the_same_boxes(kind):
    run = read_run(OLD_RUNS / kind)
    assert run.kind == kind and run.format_version == 1 and run.model["classes"] == ["circle", "square", "star",
                                                                                        "triangle"]
    with rcnn_cli.load(OLD_RUNS / kind, device="cpu", **_options(kind)) as detector:
        assert isinstance(detector, Detector) and detector.kind == kind
        for path, want in zip(IMAGES, EXPECTED[kind]):
            det = detector(path)  # a path: decoded by the one loader, id from the file name
            assert det.image_id == want["image_id"] == path.stem
            assert det.labels == want["labels"]
            np.testing.assert_allclose(det.boxes, np.asarray(want["boxes"], np.float32).reshape(-1, 4), atol=1e-3)
            np.testing.assert_allclose(det.scores, want["scores"], atol=1e-5)
            if kind == "faster":  # the RPN's boxes after its NMS, at most the run's 300
                assert 0 < det.num_proposals <= 300
            else:
                assert det.num_proposals == len(EXPECTED["proposals"][path.stem])
    assert len(EXPECTED[kind][0]["boxes"]) > 0  # the fixture does hold detections to compare


def test_load_takes_a_pil_image_or_an_array_and_returns_dicts():
    with rcnn_cli.load(OLD_RUNS / "faster", device="cpu", config=DetectConfig(score_threshold=0.001)) as det:
        image = Image.open(IMAGES[0]).convert("RGB")
        a, b = det(image, "x"), det(np.asarray(image))
        assert a.image_id == "x" and b.image_id == "image"
        np.testing.assert_array_equal(a.boxes, b.boxes)
        d = a.to_dict()
        assert d["image_id"] == "x" and len(d["detections"]) == len(a)
        assert set(d["detections"][0]) == {"label", "score", "box"} and len(d["detections"][0]["box"]) == 4
        with pytest.raises(UserError, match=r"\(H, W, 3\)"):
            det(np.zeros((4, 4)))


def test_new_runs_record_kind_and_format(tmp_path):
    run = tmp_path / "r"
    shutil.copytree(OLD_RUNS / "rcnn", run)
    from rcnn_cli.rcnn.model import load_model, save_svm

    model = load_model(run)
    save_svm(run, model.svm, {k: model.config[k] for k in ("backbone", "weights_id", "layer", "warp_size", "padding",
                                                          "feature_dim")}, {"C": 0.001})
    record = json.loads((run / "config.json").read_text())
    assert record["kind"] == "rcnn" and record["format_version"] == 2 and record["model"]["classes"] == model.classes
    assert "rcnn_version" in record and record["command"] == "rcnn train-svm"


def test_unknown_kind_format_and_foreign_options_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"kind": "rcnn", "format_version": 99, "model": {}}))
    with pytest.raises(UserError, match="format version 99"):
        load_detector(bad)
    (bad / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a run of rcnn"):
        load_detector(bad)
    with pytest.raises(UserError, match="--rpn-top-n: not a setting of a 'rcnn' run"):
        load_detector(OLD_RUNS / "rcnn", rpn_top_n=5)


@pytest.mark.parametrize("kind", ["rcnn", "fast", "faster"])
def test_rcnn_detect_command_works_for_every_kind(kind, tmp_path, capsys):
    out = tmp_path / "dets.jsonl"
    extra = ["--score-threshold", "0.001"] if kind == "faster" else []
    with pytest.raises(SystemExit) as e:
        main(["detect", str(IMAGES[0]), "--model", str(OLD_RUNS / kind), "--out", str(out), "--no-progress",
              "--device", "cpu", *extra])
    assert e.value.code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["image_id"] for x in lines] == [IMAGES[0].stem]
    assert all(d["label"] in ("circle", "square", "star", "triangle") for d in lines[0]["detections"])
    record = json.loads(Path(str(out) + ".config.json").read_text())["config"]
    assert record["kind"] == kind and record["score_threshold"] == (0.001 if kind == "faster" else 0.05)


def _coco_dataset(tmp_path: Path) -> Path:
    """The fixture's two test images as a COCO dataset with ids that no file name gives."""
    ann = {"images": [{"id": 4000 + i, "file_name": p.name, "width": 128, "height": 128} for i, p in enumerate(IMAGES)],
           "annotations": [{"id": 1 + i, "image_id": 4000 + i, "category_id": 17, "bbox": [10, 10, 30, 30],
                            "area": 900, "iscrowd": 0} for i in range(len(IMAGES))],
           "categories": [{"id": 11 + 2 * k, "name": c} for k, c in enumerate(["circle", "square", "star",
                                                                               "triangle"])]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.mark.parametrize("command", [["fast", "detect"], ["faster", "detect"]])
def test_alias_detect_on_coco_writes_the_datasets_own_ids(command, tmp_path):
    from pycocotools.coco import COCO

    coco = _coco_dataset(tmp_path)
    out = tmp_path / "results.json"
    kind = command[0]
    extra = ["--score-threshold", "0.001"] if kind == "faster" else ["--proposals", str(_proposals_file(tmp_path))]
    with pytest.raises(SystemExit) as e:
        main([*command, str(coco), "--images", str(OLD_RUNS / "images"), "--model", str(OLD_RUNS / kind),
              "--format", "coco", "--out", str(out), "--no-progress", "--device", "cpu", *extra])
    assert e.value.code == 0
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {4000, 4001}  # the dataset's ids, not ids from file names
    assert {r["category_id"] for r in results} <= {11, 13, 15, 17}
    gt = COCO(str(coco))
    assert len(gt.loadRes(str(out)).getAnnIds()) == len(results)  # pycocotools accepts the file


def _proposals_file(tmp_path: Path) -> Path:
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.proposals import ProposalConfig, run_propose

    boxes = {k: np.asarray(v, np.float32) for k, v in EXPECTED["proposals"].items()}
    out = tmp_path / "props.h5"
    items = [ImageInput(p.stem, p) for p in IMAGES]
    order = iter([boxes[p.stem] for p in IMAGES])
    run_propose(items, out, ProposalConfig(min_size=0), proposer=lambda image: next(order), progress=False, workers=1)
    return out


def test_every_cli_default_is_its_configuration_default():
    """The CLI takes its defaults from the configuration dataclasses: one place for each."""
    import typer.main

    from rcnn_cli.cli.app import app
    from rcnn_cli.engine import TrainConfig
    from rcnn_cli.models import fast_rcnn, faster_rcnn
    from rcnn_cli.rcnn.pipeline import PipelineConfig

    d = DetectConfig()
    fast_m, fast_t = fast_rcnn.FastRCNNConfig(), TrainConfig(**fast_rcnn.TRAIN_DEFAULTS)
    faster_m, faster_t = vars(faster_rcnn.FasterRCNNConfig()), TrainConfig(**faster_rcnn.TRAIN_DEFAULTS)
    faster_names = {"rpn_pre_nms_train": "rpn_pre_nms_top_n_train", "rpn_post_nms_train": "rpn_post_nms_top_n_train",
                    "rpn_pre_nms_test": "rpn_pre_nms_top_n_test", "rpn_post_nms_test": "rpn_post_nms_top_n_test",
                    "rpn_nms": "rpn_nms_thresh", "rois_per_image": "box_batch_size_per_image"}
    root = typer.main.get_command(app)
    sources = {
        ("detect",): [vars(d)], ("fast", "detect"): [vars(d)], ("faster", "detect"): [vars(d)],
        ("fast", "train"): [vars(fast_m), fast_t.to_dict()],
        ("faster", "train"): [{k: faster_m[v] for k, v in faster_names.items()}, faster_m, faster_t.to_dict()],
        ("pipeline",): [vars(PipelineConfig())],
    }
    checked = 0
    for path, dicts in sources.items():
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option" or param.default is None:
                continue
            for values in dicts:
                if param.name in values and values[param.name] is not None:
                    default = values[param.name]
                    assert param.default == default, f"{' '.join(path)} --{param.name}: {param.default} != {default}"
                    checked += 1
                    break
    assert checked >= 40


def test_no_function_in_src_is_over_100_lines():
    script = Path(__file__).parents[1] / "scripts" / "function_lengths.py"
    res = subprocess.run([sys.executable, str(script), "--max", "100", "src"], capture_output=True, text=True,
                         cwd=script.parents[1])
    assert res.returncode == 0, res.stdout + res.stderr


def test_config_replays_a_recorded_run_and_records_the_sources(shapes_root, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    base = ["faster", "train", str(shapes_root), "--split", "trainval", "--epochs", "1", "--no-progress",
            "--device", "cpu"]
    with pytest.raises(SystemExit) as e:
        main([*base, "--out", str(first), "--min-size", "96", "--max-size", "128", "--max-iters", "1",
              "--weights", "none", "--rpn-post-nms-test", "77", "--lr-steps", "1", "--anchor-sizes", "16,32,64",
              "--color-jitter", "0.1"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main([*base, "--out", str(second), "--config", str(first / "config.json"), "--max-size", "112"])
    assert e.value.code == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert b["model"]["min_size"] == 96 and b["model"]["max_size"] == 112  # replayed; the flag given wins
    assert b["model"]["rpn_post_nms_top_n_test"] == 77 and b["model"]["anchor_sizes"] == [16.0, 32.0, 64.0]
    assert a["model"]["color_jitter"] == b["model"]["color_jitter"] == 0.1  # replayed
    assert b["model"]["weights_id"] == a["model"]["weights_id"] == "efficientnet_lite0:none-seed0"
    assert b["train"]["max_iters"] == 1 and b["train"]["lr_steps"] == [1]
    src = b["sources"]
    assert src["max_size"] == "command line" and src["min_size"] == f"config {first / 'config.json'}"
    assert src["val_split"] == "default" and src["out"] == "command line"
    assert a["sources"]["min_size"] == "command line" and a["sources"]["lr"] == "default"
    # rcnn faster train's default schedule is auto: without a time budget the whole schedule runs, so the
    # paper's step schedule without an average (tests/test_fitting.py: the budget's cases)
    assert (a["train"]["lr_schedule"], a["train"]["ema"]) == ("step", 0.0) and a["sources"]["lr_schedule"] == "default"
    paper = tmp_path / "c"
    with pytest.raises(SystemExit) as e:
        main([*base, "--out", str(paper), "--defaults", "paper", "--min-size", "96", "--max-size", "128",
              "--max-iters", "1", "--weights", "none"])
    assert e.value.code == 0
    c = json.loads((paper / "config.json").read_text())["train"]
    assert (c["lr_schedule"], c["ema"]) == ("step", 0.0)  # the paper's schedule, no average


def test_recorded_settings_from_yaml_and_bad_files(tmp_path):
    from rcnn_cli.cli.options import read_recorded

    good = tmp_path / "c.yaml"
    good.write_text("min_size: 96\nanchor_sizes: [16, 32]\n")
    assert read_recorded(good) == {"min_size": 96, "anchor_sizes": [16, 32]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_size: [1, 2\n")
    with pytest.raises(UserError, match="malformed YAML"):
        read_recorded(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="mapping"):
        read_recorded(tmp_path / "list.json")
    record = {"kind": "fast", "format_version": 2, "model": {"min_size": 300}, "train": {"lr": 0.02, "min_size": 1}}
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert read_recorded(tmp_path / "run.json") == {"lr": 0.02, "min_size": 300}  # the model's value wins


def test_detect_with_the_best_weights(tmp_path):
    run = tmp_path / "faster"
    shutil.copytree(OLD_RUNS / "faster", run)
    with pytest.raises(UserError, match="no best/ weights"):
        load_detector(run, weights="best")
    (run / "best").mkdir()
    shutil.copy(run / "model.safetensors", run / "best" / "model.safetensors")
    with load_detector(run, device="cpu", weights="best", config=DetectConfig(score_threshold=0.001)) as det:
        assert det.settings()["weights"] == "best"
        np.testing.assert_allclose(det(IMAGES[0]).boxes, np.asarray(EXPECTED["faster"][0]["boxes"]).reshape(-1, 4),
                                   atol=1e-3)
    with pytest.raises(UserError, match="--weights: not a setting of a 'rcnn' run"):
        load_detector(OLD_RUNS / "rcnn", weights="best")


def test_video_gives_a_line_per_frame_and_an_annotated_video(tmp_path):
    import cv2

    from rcnn_cli.workflows.detect import detect

    video = tmp_path / "clip.mp4"
    frame = np.asarray(Image.open(IMAGES[0]).convert("RGB"))[:, :, ::-1]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frame.shape[1], frame.shape[0]))
    for _ in range(10):
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    out, drawn = tmp_path / "dets.jsonl", tmp_path / "drawn.mp4"
    result = detect([str(video)], OLD_RUNS / "faster", config=DetectConfig(score_threshold=0.001), out=str(out),
                    draw=drawn, device="cpu", progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert result["images"] == 10 and [x["frame"] for x in lines] == list(range(10))
    assert lines[3]["time_s"] == pytest.approx(0.3) and lines[3]["image_id"] == "clip_f000003"
    cap = cv2.VideoCapture(str(drawn))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()
    every = detect([str(video)], OLD_RUNS / "faster", out=str(tmp_path / "e.jsonl"), device="cpu", progress=False,
                   every=4)
    assert every["images"] == 3
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(UserError, match="cannot open the video"):
        detect([str(tmp_path / "bad.mp4")], OLD_RUNS / "faster", device="cpu", progress=False)


@pytest.mark.parametrize("kind", ["rcnn", "faster"])
def test_export_gives_the_network_with_its_description(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import torch

    from rcnn_cli.workflows.export import export_run, network

    out = tmp_path / f"{kind}.onnx"
    info = export_run(OLD_RUNS / kind, "onnx", out, part="trunk" if kind == "faster" else None)
    described = json.loads(Path(str(out) + ".json").read_text())
    assert described["kind"] == kind and described["inputs"][0]["name"] == "images" and described["caller"]
    model, example, _ = network(OLD_RUNS / kind)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 64) if kind == "rcnn" else torch.rand(1, 3, 160, 208)  # another batch / image size
    if kind == "rcnn":
        x = torch.rand(3, *example.shape[1:])
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-3
    assert info["what"].startswith("the R-CNN region network" if kind == "rcnn" else "the faster R-CNN trunk")


@pytest.mark.parametrize("kind", ["fast", "faster"])
def test_detector_trunks_in_onnx_runtime_give_the_same_boxes(kind, tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / kind
    shutil.copytree(OLD_RUNS / kind, run)
    with load_detector(run, device="cpu", runtime="onnxruntime", **_options(kind)) as det:
        assert det.settings()["runtime"] == "onnxruntime" and list((run / "graphs").glob("*.onnx"))
        for path, want in zip(IMAGES, EXPECTED[kind]):
            d = det(path)
            assert d.labels == want["labels"]
            np.testing.assert_allclose(d.boxes, np.asarray(want["boxes"], np.float32).reshape(-1, 4), atol=0.5)


def test_whole_faster_rcnn_onnx_gives_the_runs_boxes(tmp_path, capsys):
    """`rcnn export` writes the whole detector; `rcnn detect --model M.onnx` and the README's
    five-line ONNX Runtime script give the run's boxes."""
    pytest.importorskip("onnxruntime")
    from rcnn_cli.cli import main

    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as e:
        main(["export", str(OLD_RUNS / "faster"), "--format", "onnx", "--out", str(out)])
    assert e.value.code == 0
    info = json.loads(Path(str(out) + ".json").read_text())
    assert info["part"] == "detector" and info["classes"] == read_run(OLD_RUNS / "faster").model["classes"]
    assert [o["name"] for o in info["outputs"]] == ["boxes", "scores", "labels"]
    dets = tmp_path / "d.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["detect", *map(str, IMAGES), "--model", str(out), "--score-threshold", "0.001", "--out", str(dets),
              "--no-progress"])
    assert e.value.code == 0
    got = [json.loads(line) for line in dets.read_text().splitlines()]
    for line, want in zip(got, EXPECTED["faster"]):
        assert [d["label"] for d in line["detections"]] == want["labels"]
        np.testing.assert_allclose([d["box"] for d in line["detections"]],
                                   np.asarray(want["boxes"]).reshape(-1, 4), atol=1.0)
    from PIL import Image

    from rcnn_cli.detector import DetectConfig

    low = DetectConfig(score_threshold=0.001)
    photo = Image.open(IMAGES[0]).convert("RGB")
    with load_detector(OLD_RUNS / "faster", device="cpu", config=low) as run, load_detector(out, config=low) as graph:
        for size in [(300, 200), (200, 320), (90, 60), (1200, 900)]:  # other sizes than the export's example
            a, b = run(photo.resize(size)), graph(photo.resize(size))
            assert a.labels == b.labels and len(a) > 0
            np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    script = readme.split("<!-- onnx-script -->")[1].split("```python")[1].split("```")[0]
    assert len(script.strip().splitlines()) == 5
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        shutil.copy(IMAGES[0], tmp_path / "photo.jpg")
        shutil.copy(out, tmp_path / "model.onnx")
        described = json.loads(Path(str(out) + ".json").read_text())
        described["detect"]["score_threshold"] = 0.001  # the fixture run's scores are low: keep its boxes
        (tmp_path / "model.onnx.json").write_text(json.dumps(described))
        capsys.readouterr()
        exec(compile(script, "README", "exec"), {})
    finally:
        os.chdir(cwd)
    import ast

    printed = ast.literal_eval(capsys.readouterr().out.strip())  # [(class, score, [x1, y1, x2, y2]), ...]
    want = EXPECTED["faster"][0]
    assert [p[0] for p in printed] == want["labels"] and len(printed) > 0
    np.testing.assert_allclose([p[2] for p in printed], np.asarray(want["boxes"]).reshape(-1, 4), atol=0.06)


def test_yolo_output_reads_back_with_the_same_boxes(tmp_path):
    """`--format yolo` label files, read by the YOLO dataset reader, give the detections' boxes."""
    from rcnn_cli.cli import main
    from rcnn_cli.data.inputs import load_dataset

    labels, images = tmp_path / "ds" / "labels" / "pred", tmp_path / "ds" / "images" / "pred"
    images.mkdir(parents=True)
    for p in IMAGES:
        shutil.copy(p, images / p.name)
    with pytest.raises(SystemExit) as e:
        main(["detect", str(images), "--model", str(OLD_RUNS / "faster"), "--score-threshold", "0.001",
              "--format", "yolo", "--out", str(labels), "--no-progress", "--device", "cpu"])
    assert e.value.code == 0
    classes = (labels / "classes.txt").read_text().split()
    (tmp_path / "ds" / "data.yaml").write_text(json.dumps({"names": classes, "pred": "images/pred"}))
    back = {r.image_id: r for r in load_dataset(tmp_path / "ds", "pred").records}
    for path, want in zip(IMAGES, EXPECTED["faster"]):
        assert back[path.stem].labels == want["labels"]
        np.testing.assert_allclose(back[path.stem].boxes, np.asarray(want["boxes"]).reshape(-1, 4), atol=1e-3)
    conf = [float(line.split()[5]) for line in (labels / f"{IMAGES[0].stem}.txt").read_text().splitlines()]
    np.testing.assert_allclose(conf, EXPECTED["faster"][0]["scores"], atol=1e-6)


def test_classes_agnostic_nms_and_draw_threshold_select_the_output(tmp_path):
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import DetectOutput, run_inference
    from rcnn_cli.boxes import ImageDetections

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]], np.float32)
    det = ImageDetections("a", boxes, np.array([0.9, 0.8, 0.2], np.float32), ["cat", "dog", "dog"])
    assert DetectOutput(keep_classes=["dog"]).select(det).labels == ["dog", "dog"]
    agnostic = DetectOutput(agnostic_nms=0.5).select(det)  # IoU of the first two is 81/121 > 0.5
    assert agnostic.labels == ["cat", "dog"] and agnostic.boxes[1].tolist() == [30, 30, 40, 40]
    assert DetectOutput(agnostic_nms=0.7).select(det).labels == ["cat", "dog", "dog"]
    with pytest.raises(UserError, match="--classes bird: not a class of this model"):
        DetectOutput(keep_classes=["bird"]).check_classes(["cat", "dog"])
    from PIL import Image

    Image.new("RGB", (50, 50)).save(tmp_path / "a.png")
    drawn = []
    import rcnn_cli.visualize as vis

    real = vis.draw_detections
    vis.draw_detections = lambda image, d, classes: drawn.append(list(d.scores)) or real(image, d, classes)
    try:
        out = tmp_path / "d.jsonl"
        run_inference(lambda image, image_id: det, [ImageInput("a", tmp_path / "a.png")],
                      DetectOutput(out, draw=tmp_path / "drawn"), classes=["cat", "dog"], progress=False)
    finally:
        vis.draw_detections = real
    assert np.allclose(drawn[0], [0.9, 0.8])  # 0.2 is below the drawing threshold (0.3) ...
    assert len(json.loads(out.read_text())["detections"]) == 3  # ... and kept in the file


def test_python_api_takes_settings_and_lists():
    import rcnn_cli

    with rcnn_cli.load(OLD_RUNS / "faster", device="cpu") as det:
        own = det.config
        low = det(IMAGES[0], score_threshold=0.001)
        assert det.config == own and len(low) == len(EXPECTED["faster"][0]["labels"])
        np.testing.assert_allclose(low.boxes, np.asarray(EXPECTED["faster"][0]["boxes"]).reshape(-1, 4), atol=0.5)
        few = det(IMAGES[0], score_threshold=0.001, top_k=3, nms=0.3)
        assert len(few) == 3 and few.scores.tolist() == sorted(few.scores.tolist(), reverse=True)
        both = det(list(IMAGES), score_threshold=0.001)
        assert [len(d) for d in both] == [len(e["labels"]) for e in EXPECTED["faster"]]
        assert [d.image_id for d in both] == [p.stem for p in IMAGES]


@pytest.mark.parametrize("kind", ["fast", "faster"])
def test_detect_runs_the_fastest_runtime_by_default_with_the_same_boxes(kind, tmp_path):
    """`rcnn detect` defaults to --runtime auto (OpenVINO, else ONNX Runtime): boxes within 0.5 px of
    torch's, the runtime in effect recorded beside the output."""
    pytest.importorskip("onnxruntime")
    from rcnn_cli.workflows.detect import detect
    from rcnn_cli.backends import resolve_runtime

    run = tmp_path / kind
    shutil.copytree(OLD_RUNS / kind, run)
    options = _options(kind)
    config = options.pop("config", None)
    outs = {}
    for name, extra in (("auto", {}), ("torch", {"runtime": "torch"})):
        outs[name] = tmp_path / f"{name}.jsonl"
        detect([str(p) for p in IMAGES], run, config=config, out=str(outs[name]), device="cpu", progress=False,
               **options, **extra)
    record = json.loads(Path(str(outs["auto"]) + ".config.json").read_text())["config"]
    assert record["runtime"] == resolve_runtime("auto") != "torch"
    auto, torch_ = ([json.loads(x) for x in outs[n].read_text().splitlines()] for n in ("auto", "torch"))
    for a, b in zip(auto, torch_):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        np.testing.assert_allclose([d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=0.5)


def test_whole_fast_rcnn_onnx_takes_the_proposals_as_a_second_input(tmp_path):
    """Fast R-CNN as one graph with the proposals as its second input: the run's boxes at the image's
    own size and at others than the export's example (a RoIAlign run: ONNX's MaxRoiPool bins RoI max
    pooling differently)."""
    ort = pytest.importorskip("onnxruntime")
    from PIL import Image

    from rcnn_cli.data.images import load_image, to_tensor
    from rcnn_cli.workflows.export import export_run

    run = tmp_path / "fast"
    shutil.copytree(OLD_RUNS / "fast", run)
    record = json.loads((run / "config.json").read_text())
    record["config"]["model"]["roi_align"] = True  # a format-1 record
    (run / "config.json").write_text(json.dumps(record))
    out = tmp_path / "fast.onnx"
    info = export_run(run, "onnx", out, part="detector")
    assert [i["name"] for i in info["inputs"]] == ["image", "proposals"] and info["kind"] == "fast"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    photo = Image.open(IMAGES[0]).convert("RGB")
    with load_detector(run, device="cpu", **_options("fast")) as det:
        for path, image in [(p, load_image(p)) for p in IMAGES] + [(IMAGES[0], photo.resize((200, 150)))]:
            props = det.propose(image, path.stem)[: det.max_proposals]  # the fixture's proposals, as the run reads them
            boxes, scores, labels = session.run(None, {"image": to_tensor(image).numpy(), "proposals": props})
            keep = scores >= info["detect"]["score_threshold"]
            want = det.detect(image, path.stem)
            assert len(want) > 0 and [det.classes[k - 1] for k in labels[keep]] == want.labels
            np.testing.assert_allclose(boxes[keep], want.boxes, atol=1e-3)
            np.testing.assert_allclose(scores[keep], want.scores, atol=1e-5)
    # `rcnn detect --model fast.onnx`: selective search with the run's settings, then the graph
    from rcnn_cli.detector import DetectConfig

    with load_detector(run, device="cpu") as live, load_detector(out, config=DetectConfig()) as graph:
        a, b = live(IMAGES[0]), graph(IMAGES[0])
        assert a.num_proposals == b.num_proposals and a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


class _MirrorAware(Detector):
    """A fake detector: an ``a`` at x 10-30 in the plain image; in the mirror image the same object
    found one pixel off (x 71-91 of 100, i.e. 9-29 once mirrored back) at a lower score; a ``b`` at
    x 60-70 in both (so at 30-40 once the mirror image's is mirrored back: no overlap)."""

    kind, classes = "fake", ["a", "b"]

    def __init__(self):
        self.config, self.calls = DetectConfig(nms=0.5, top_k=1), 0

    def detect(self, image, image_id):
        from rcnn_cli.boxes import ImageDetections

        self.calls += 1
        mirrored = self.calls % 2 == 0
        box, score, other = ([71, 5, 91, 25], 0.6, 0.05) if mirrored else ([10, 5, 30, 25], 0.8, 0.1)
        return ImageDetections(image_id, [box, [60, 60, 70, 70]], [score, other], ["a", "b"],
                               timings={"network": 1.0}, num_proposals=7)


def test_flip_tta_merges_the_mirror_images_boxes_by_voting(tmp_path):
    from rcnn_cli.detector import FlipTTA

    det = FlipTTA(_MirrorAware())
    out = det(Image.new("RGB", (100, 40)), "img", top_k=3)
    assert det.inner.calls == 2 and out.labels == ["a", "b", "b"]
    x1 = (0.8 * 10 + 0.6 * 9) / 1.4  # the score-weighted mean of 10 and the mirrored-back 9
    np.testing.assert_allclose(out.boxes[0], [x1, 5, x1 + 20, 25], atol=1e-5)
    np.testing.assert_allclose(out.scores, [0.8, 0.1, 0.05], atol=1e-6)  # the top score stays
    np.testing.assert_allclose(out.boxes[1:], [[60, 60, 70, 70], [30, 60, 40, 70]])  # apart: both kept
    assert out.timings == {"network": 2.0} and out.num_proposals == 14
    assert len(det(Image.new("RGB", (100, 40)), "img").boxes) == 1  # the detector's own top_k: 1
    assert det.settings()["tta"] == "flip"
