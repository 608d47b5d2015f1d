"""The shell scripts in examples/ run as a user runs them (bash, `rcnn` on PATH), on tiny shapes data.

Every script runs once, WORKERS at a time (the module fixture starts them all on a thread pool,
the longest first), with tiny settings: 6 training / 3 test images of 128 px, 20 proposals per image,
32-pixel warps, one epoch, one thread per process. The tests check the values in what the scripts
wrote: one detection line per test image, the drawn image count, proposal files holding the split's
images, evaluation JSON with every class and mAP = mean AP in [0, 1], and that the stage-by-stage
chain reproduces `rcnn pipeline`'s mAP exactly.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from rcnn_cli.data.shapes import make_shapes
from rcnn_cli.data.voc import load_voc
from rcnn_cli.proposals import load as load_proposals

pytestmark = pytest.mark.slow  # end to end: each example script runs as a user runs it

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BIN = Path(sys.executable).parent  # the venv's bin: rcnn, torchrun, python3
CLASSES = ["circle", "square", "star", "triangle"]
TRAIN, TEST, SIZE, LIMIT = 6, 3, 128, 20
ENV = {
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "120",
    "DEVICE": "cpu", "TRAIN_IMAGES": str(TRAIN), "TEST_IMAGES": str(TEST), "IMAGE_SIZE": str(SIZE),
    "LIMIT": str(LIMIT), "WARP": "32", "WORKERS": "1", "EPOCHS": "1", "WARMUP_ITERS": "1", "MIN_SIZE": str(SIZE),
    "RPN_TOP_N": str(LIMIT), "ROIS": "16", "SCORE": "0",
}
SETTINGS = ("GRID", "BOXES_PER_CELL", "INPUT_SIZE", "BOXES", "ATTACH", "K", "HEAD_ONLY", "MODEL", "IMAGES", "JQ", "TORCHRUN", "FINETUNE", "FT_ITERS", "MAX_ITERS", "NPROC", "METHOD", "METRICS",
            "TRAIN_SPLIT", "TEST_SPLIT", "BACKBONE", "WEIGHTS", "PADDING", "MODE", "SS_MAX_SIZE", "MAX_SIZE", "MIN_BOX",
            "BATCH", "LR", "LR_STEPS", "ANCHOR_SIZES", "SEED", "RESUME", "OVERFEAT", "OVERFEAT_EPOCHS", "MERGE")  # script settings a user may have exported
WORKERS = 2  # scripts at a time (each process is single-threaded: OMP_NUM_THREADS=1)
HAS_TORCHRUN = shutil.which("torchrun", path=ENV["PATH"]) is not None


def _run(script: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **ENV, **(env or {}))
    for var in SETTINGS:
        if var not in (env or {}):
            full_env.pop(var, None)  # a user's setting must not leak into the test
    return subprocess.run(["bash", str(EXAMPLES / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes data the scripts that take a dataset get (the same bytes `rcnn data make-shapes` writes)."""
    return make_shapes(tmp_path_factory.mktemp("ex_data") / "shapes", train=TRAIN, test=TEST, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory):
    """Start every script (two at a time, longest first); name -> (Future of the process, OUT_DIR)."""
    root = tmp_path_factory.mktemp("ex_runs")
    jobs = [  # (name, script, dataset argument, extra environment)
        ("stages", "rcnn_stages.sh", "", {"METRICS": "voc07"}),  # no dataset: it generates the shapes data itself
        ("faster", "faster_rcnn.sh", str(data), {"MIN_BOX": "8", "METRICS": "voc07"}),
        ("fast", "fast_rcnn.sh", str(data), {"MIN_BOX": "8", "METRICS": "voc12"}),
        ("torchrun", "torchrun.sh", str(data), {"NPROC": "2", "METHOD": "faster"}),
        ("folder", "detect_folder.sh", str(data), {}),
        ("yolo", "yolo.sh", str(data), {"GRID": "2", "INPUT_SIZE": "64"}),
        ("localize", "localize.sh", "", {"INPUT_SIZE": "64", "OVERFEAT_EPOCHS": "1"}),  # makes single-object shapes
    ]
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    started: dict[str, tuple[Future, Path]] = {}
    for name, script, dataset, env in jobs:
        if name == "torchrun" and not HAS_TORCHRUN:
            continue
        out = root / name
        started[name] = (pool.submit(_run, script, [dataset, str(out)], env), out)
    yield started
    pool.shutdown(wait=True)


def _result(runs, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    future, out = runs[name]
    return _ok(future.result(timeout=900)), out


def _split_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _check_detections(path: Path, ids: list[str]) -> list[dict]:
    """One JSON line per image, in input order; labels are classes; boxes inside the 128 px images."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert [d["image_id"] for d in lines] == ids
    for d in lines:
        for det in d["detections"]:
            assert det["label"] in CLASSES and 0.0 <= det["score"] <= 1.0
            x1, y1, x2, y2 = det["box"]
            assert -1e-3 <= x1 <= x2 <= SIZE + 1e-3 and -1e-3 <= y1 <= y2 <= SIZE + 1e-3
    return lines


def _check_eval(path: Path, metric: str, num_images: int = TEST) -> dict:
    """Evaluation JSON: the metric, every class, mAP the mean of the APs, all in [0, 1]."""
    ev = json.loads(path.read_text())
    assert ev["metric"] == metric and ev["num_images"] == num_images and ev["iou"] == 0.5
    assert sorted(ev["AP"]) == CLASSES
    assert all(-1e-9 <= ap <= 1 + 1e-9 for ap in ev["AP"].values())
    assert ev["mAP"] == pytest.approx(sum(ev["AP"].values()) / len(CLASSES))
    return ev


def _check_proposals(path: Path, ids: list[str], limit: int = LIMIT) -> None:
    with load_proposals(path) as p:
        assert sorted(p.ids()) == sorted(ids)
        for i in ids:
            boxes = p.boxes(i)
            assert 0 < len(boxes) <= limit and boxes.shape[1] == 4
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def _images(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def test_rcnn_stages(runs):
    proc, out = _result(runs, "stages")
    data = out / "data"  # generated by the script: 6 + 3 images
    train_ids, test_ids = _split_ids(data, "trainval"), _split_ids(data, "test")
    assert (len(train_ids), len(test_ids)) == (TRAIN, TEST)
    _check_proposals(out / "proposals_trainval.h5", train_ids)
    _check_proposals(out / "proposals_test.h5", test_ids)
    recall = json.loads((out / "recall_test.json").read_text())
    num_gt = sum(len(r.boxes) for r in load_voc(data, "test").records)
    assert recall["num_images"] == TEST and recall["num_gt"] == num_gt and recall["missing_images"] == 0
    assert 0 < recall["boxes_per_image"] <= LIMIT and 0 <= recall["recall@0.7"] <= recall["recall@0.5"] <= 1
    assert sorted(p.name for p in (out / "recall_plots").glob("*.png")) == ["recall_vs_iou.png", "recall_vs_proposals.png"]
    assert (out / "features_trainval.h5").stat().st_size > 0 and not (out / "finetune").exists()
    model = json.loads((out / "model" / "config.json").read_text())["model"]
    assert model["classes"] == CLASSES and model["warp_size"] == 32 and model["padding"] == 3
    assert (out / "model" / "svm.safetensors").exists() and (out / "model" / "bbox.safetensors").exists()
    dets = _check_detections(out / "detections_test.jsonl", test_ids)
    assert sum(len(d["detections"]) for d in dets) > 0
    assert _images(out / "drawn") == test_ids
    ev = _check_eval(out / "eval_voc07.json", "voc07")
    assert ev["num_detections"] == sum(len(d["detections"]) for d in dets)
    assert sorted(p.name for p in (out / "pr_voc07").glob("*.png")) == sorted(
        [f"pr_{c}.png" for c in CLASSES] + ["pr_overview.png"])
    assert f"Outputs in {out}" in proc.stdout


def test_faster_rcnn(runs, data):
    proc, out = _result(runs, "faster")
    test_ids = _split_ids(data, "test")
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["command"] == "rcnn faster train" and cfg["model"]["classes"] == CLASSES
    assert (out / "model" / "model.safetensors").stat().st_size > 0
    _check_detections(out / "detections_test.jsonl", test_ids)
    assert _images(out / "drawn") == test_ids
    ev = _check_eval(out / "eval_voc07.json", "voc07")
    assert not (out / "eval_voc12.json").exists()  # METRICS=voc07
    _check_proposals(out / "proposals_rpn_test.h5", test_ids)
    _check_proposals(out / "proposals_ss_test.h5", test_ids)
    rpn, ss = (json.loads((out / f"recall_{m}.json").read_text()) for m in ("rpn", "ss"))
    assert rpn["method"] == "rpn" and ss["method"] == "selective-search"
    assert rpn["num_gt"] == ss["num_gt"] > 0 and rpn["num_images"] == ss["num_images"] == TEST
    assert rpn["boxes_per_image"] <= LIMIT and ss["boxes_per_image"] <= LIMIT
    # the script's summary prints exactly these numbers
    assert f"Faster R-CNN mAP@0.5: VOC07 {100 * ev['mAP']:.1f}\n" in proc.stdout
    for name, r in (("RPN", rpn), ("selective search", ss)):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(name + " "))
        assert row.split()[-4:] == [f"{r['boxes_per_image']:.0f}", f"{r['recall@0.5']:.3f}",
                                    f"{r['recall@0.7']:.3f}", f"{r['mabo']:.3f}"]


def test_fast_rcnn(runs, data):
    proc, out = _result(runs, "fast")
    train_ids, test_ids = _split_ids(data, "trainval"), _split_ids(data, "test")
    _check_proposals(out / "proposals_trainval.h5", train_ids)
    _check_proposals(out / "proposals_test.h5", test_ids)
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["command"].startswith("rcnn fast train") and cfg["model"]["classes"] == CLASSES
    # one epoch of 6 images at 2 per step
    iters = [json.loads(x) for x in (out / "model" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in iters) == math.ceil(TRAIN / 2)
    _check_detections(out / "detections_test.jsonl", test_ids)
    assert _images(out / "drawn") == test_ids
    _check_eval(out / "eval_voc12.json", "voc12")
    assert sorted(p.name for p in (out / "pr_voc12").glob("*.png")) == sorted(
        [f"pr_{c}.png" for c in CLASSES] + ["pr_overview.png"])


@pytest.mark.skipif(not HAS_TORCHRUN, reason="torchrun is not installed")
def test_torchrun(runs, data):
    proc, out = _result(runs, "torchrun")
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["command"] == "rcnn faster train" and cfg["train"]["world_size"] == 2
    # 6 images over 2 processes at 2 images per process and step: 2 steps; rank 0 alone logs them
    lines = [json.loads(x) for x in (out / "model" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["iteration"] for r in lines if r["type"] == "iter"]
    assert steps == sorted(set(steps)) and max(r["iteration"] for r in lines) == math.ceil(math.ceil(TRAIN / 2) / 2)
    _check_detections(out / "detections_test.jsonl", _split_ids(data, "test"))
    _check_eval(out / "eval_voc07.json", "voc07")
    assert "2 processes x 1 threads" in proc.stdout


def test_detect_folder(runs, data):
    proc, out = _result(runs, "folder")
    every = sorted(_split_ids(data, "trainval") + _split_ids(data, "test"))  # `find | sort`: all of JPEGImages
    dets = _check_detections(out / "detections.jsonl", every)
    assert _images(out / "drawn") == every
    # summary.tsv (jq or python) agrees with the JSON lines; SCORE=0 lists every box
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == every
    assert [r[1] for r in rows] == [f"{len(d['detections'])} boxes" for d in dets]
    assert [len(r[2].split(", ")) if r[2] else 0 for r in rows] == [len(d["detections"]) for d in dets]
    counts = collections.Counter(x["label"] for d in dets for x in d["detections"])
    assert (out / "per_class.tsv").read_text().split() == [t for c in sorted(counts) for t in (c, str(counts[c]))]
    # detect piped into evaluate == the evaluation `rcnn pipeline` made of the same model
    piped = _check_eval(out / "eval_test.json", "voc07")
    pipeline = json.loads((out / "rcnn_run" / "metrics.json").read_text())
    assert piped["num_detections"] == pipeline["voc07"]["num_detections"]
    assert piped["AP"] == pytest.approx(pipeline["voc07"]["AP"], abs=1e-9)
    assert "rcnn detect | rcnn evaluate" in proc.stdout


def test_detect_folder_without_jq_summarises_the_same(runs, data, tmp_path):
    """JQ pointing nowhere: the python3 fallback writes the same summary as jq did (MODEL given, no evaluation)."""
    _, first = _result(runs, "folder")
    out = tmp_path / "nojq"
    proc = _ok(_run("detect_folder.sh", [str(data), str(out)],
                    {"MODEL": str(first / "rcnn_run" / "model"), "JQ": "jq-is-not-installed", "TEST_SPLIT": "none"}))
    assert "summarising with python3" in proc.stderr
    def boxes(path: Path) -> list:  # the detections without the per-image timings
        return [(d["image_id"], d["detections"]) for d in map(json.loads, path.read_text().splitlines())]

    assert boxes(out / "detections.jsonl") == boxes(first / "detections.jsonl")
    assert (out / "summary.tsv").read_text() == (first / "summary.tsv").read_text()
    assert (out / "per_class.tsv").read_text() == (first / "per_class.tsv").read_text()
    assert not (out / "eval_test.json").exists() and not (out / "rcnn_run").exists()


def test_stage_chain_reproduces_pipeline(runs):
    """rcnn_stages.sh (its own generated data: the same bytes) == `rcnn pipeline` with the same settings."""
    _, stages = _result(runs, "stages")
    _, folder = _result(runs, "folder")
    pipeline = json.loads((folder / "rcnn_run" / "metrics.json").read_text())
    ev = json.loads((stages / "eval_voc07.json").read_text())
    assert ev["num_detections"] == pipeline["voc07"]["num_detections"] > 0
    assert ev["AP"] == pytest.approx(pipeline["voc07"]["AP"], abs=1e-9)
    assert ev["mAP"] == pytest.approx(pipeline["mAP"]["voc07"], abs=1e-9)


def test_sharded_proposals_example_merges_the_shards(tmp_path):
    from rcnn_cli.proposals import load

    env = {"NPROC": "2", "MAX_SIZE": "96"}  # the tiny data settings (ENV) and 2 shards
    _ok(_run("sharded_proposals.sh", ["", str(tmp_path)], env))
    with load(tmp_path / "proposals_trainval.h5") as merged:
        assert merged.ids() == [f"trainval_{k:05d}" for k in range(int(ENV["TRAIN_IMAGES"]))]
        assert merged.attrs["shard"] == "merged"
    subprocess.run(["bash", "-n", str(EXAMPLES / "slurm_proposals.sbatch")], check=True)


def test_yolo_script(runs, data):
    proc, out = _result(runs, "yolo")
    ceiling = json.loads((out / "ceiling_trainval.json").read_text())
    assert {(r["grid"], r["boxes_per_cell"]) for r in ceiling} >= {(2, 2), (7, 1), (14, 2)}
    assert all(0 <= r["total"] <= 1 for r in ceiling)
    _check_detections(out / "detections_test.jsonl", _split_ids(data, "test"))
    _check_eval(out / "eval_test.json", "voc12")
    assert json.loads((out / "run" / "config.json").read_text())["kind"] == "yolo"


def test_localize_script(runs):
    proc, out = _result(runs, "localize")
    test_ids = _split_ids(out / "data", "test")
    lines = [json.loads(x) for x in (out / "guesses_test.jsonl").read_text().splitlines()]
    assert [d["image_id"] for d in lines] == test_ids
    classes = json.loads((out / "run" / "config.json").read_text())["model"]["classes"]
    assert all(len(d["detections"]) == min(5, len(classes)) for d in lines)  # the top-5 guesses
    for d in lines:
        for g in d["detections"]:
            x1, y1, x2, y2 = g["box"]
            assert 0 <= x1 <= x2 <= SIZE and 0 <= y1 <= y2 <= SIZE and g["label"] in classes
    loc = json.loads((out / "loc_test.json").read_text())
    assert loc["metric"] == "loc" and loc["num_images"] == TEST
    assert all(0 <= loc[k] <= 1 for k in ("top1_loc_error", "top5_loc_error", "gt_known_loc_error"))
    if len(classes) <= 5:
        assert loc["top5_cls_error"] <= 1 - sum(  # every class the model knows is guessed
            1 for r in load_voc(out / "data", "test").records if r.labels[0] in classes) / TEST
    overfeat = [json.loads(x) for x in (out / "overfeat_test.jsonl").read_text().splitlines()]
    assert [d["image_id"] for d in overfeat] == test_ids
    assert json.loads((out / "overfeat" / "config.json").read_text())["kind"] == "overfeat"
    for name in ("overfeat_loc_test.json", "overfeat_voc12_test.json"):
        result = json.loads((out / name).read_text())
        assert result["metric"] in ("loc", "voc12") and result["num_images"] == TEST
