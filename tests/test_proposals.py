"""Proposals: box mapping, filtering, fallback, bad images, the crash-safe store (real SIGKILL), recall."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from rcnn_cli import proposals as P
from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.data.inputs import ImageInput, resolve_inputs
from rcnn_cli.errors import UserError
from rcnn_cli.evaluation.recall import plot_recall, recall_stats
from rcnn_cli.log import logger


@pytest.fixture
def records():
    """Collect the package's log records (its logger may not propagate to caplog)."""
    got: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record):
            got.append(record)

    h = H(level=logging.DEBUG)
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(h)
    logger.setLevel(old)


def blocks_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random coloured rectangles: selective search finds plenty of regions quickly."""
    rng = np.random.default_rng(seed)
    arr = np.full((h, w, 3), 200, np.uint8)
    for _ in range(12):
        x1, y1 = rng.integers(0, max(1, w - 8)), rng.integers(0, max(1, h - 8))
        x2, y2 = x1 + rng.integers(5, max(6, w // 2)), y1 + rng.integers(5, max(6, h // 2))
        arr[y1:y2, x1:x2] = rng.integers(0, 255, 3)
    img = Image.fromarray(arr)
    return img.convert(mode) if mode != "RGB" else img


def write_images(folder: Path, n: int, size=(160, 120)) -> list[ImageInput]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        blocks_image(*size, seed=i).save(folder / f"img{i:02d}.png")
    return resolve_inputs([str(folder)])


def contents(path: Path) -> dict:
    with P.load(path) as r:
        return {i: (r.boxes(i), r.image_size(i), r.info(i)["method"]) for i in r.ids()}


# ---------------------------------------------------------------------------------------------- boxes

def test_boxes_map_back_to_original_pixels(monkeypatch):
    seen = {}

    def fake(bgr, mode="fast", seed=0):
        seen["shape"] = bgr.shape
        return np.array([[10, 20, 30, 40], [0, 0, 500, 250], [10, 20, 30, 40], [400, 240, 5, 5]])

    monkeypatch.setattr(P, "opencv_selective_search", fake)
    img = Image.new("RGB", (1000, 500))
    res = P.propose_image(img, max_size=500, min_size=20)
    assert seen["shape"] == (250, 500, 3)  # longer side resized to 500
    # rect x,y,w,h=(10,20,30,40) -> (10,20,40,60) at half size -> x2 in original pixels
    np.testing.assert_allclose(res.boxes, [[20, 40, 80, 120], [0, 0, 1000, 500]])  # dup and 10x10 dropped
    assert res.method == "selective-search" and not res.fallback
    # no enlargement of small images
    small = P.propose_image(Image.new("RGB", (300, 200)), max_size=500, min_size=0)
    assert seen["shape"] == (200, 300, 3)
    np.testing.assert_allclose(small.boxes[0], [10, 20, 40, 60])


def test_filter_boxes_min_size_duplicates_order_limit():
    boxes = np.array([[0, 0, 50, 50], [5, 5, 20, 60], [0, 0, 50, 50], [10, 10, 40, 40],
                      [-10, 90, 30, 130], [60, 0, 90, 19.5]], np.float32)
    out = P.filter_boxes(boxes, width=100, height=120, min_size=20)
    # 15 px wide and 19.5 px tall dropped, duplicate dropped, order kept, clipped to the image
    np.testing.assert_allclose(out, [[0, 0, 50, 50], [10, 10, 40, 40], [0, 90, 30, 120]])
    np.testing.assert_allclose(P.filter_boxes(boxes, 100, 120, 20, limit=2), out[:2])
    # an image smaller than min-size keeps its whole-image box
    np.testing.assert_allclose(P.filter_boxes([[0, 0, 8, 6]], 8, 6, 20), [[0, 0, 8, 6]])


def test_limit_is_a_prefix_and_seed_makes_it_deterministic():
    img = blocks_image(200, 150, seed=3)
    full = P.selective_search(img, max_size=500, min_size=10)
    again = P.selective_search(img, max_size=500, min_size=10)
    top = P.selective_search(img, max_size=500, min_size=10, limit=25)
    assert len(full) > 25
    np.testing.assert_array_equal(full, again)
    np.testing.assert_array_equal(top, full[:25])
    assert (full[:, 2] - full[:, 0] >= 10).all() and (full[:, 3] - full[:, 1] >= 10).all()
    assert len(np.unique(full, axis=0)) == len(full)


def test_sliding_windows_cover_scales_and_aspects():
    b = P.sliding_windows(200, 100, min_size=20)
    np.testing.assert_allclose(b[0], [0, 0, 200, 100])
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 200).all() and (b[:, 3] <= 100).all()
    assert w.min() >= 20 and h.min() >= 20
    assert {1.0, 2.0, 0.5} <= set(np.round(w / h, 2))
    assert any((b[:, 2] == 200) & (w < 50))  # grid reaches the right border
    assert len(P.sliding_windows(200, 100, 20, limit=7)) == 7


def test_escape_ids_round_trip():
    for i in ["a/b", "100%/x", ".", "plain", "a%2Fb"]:
        assert "/" not in P.escape_id(i) and P.unescape_id(P.escape_id(i)) == i


# ---------------------------------------------------------------------------------------------- fallback, bad images

def test_fallback_on_1x1_and_injected_opencv_assert_on_panorama(tmp_path, monkeypatch, records):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "tiny.png")
    blocks_image(2000, 100, seed=1).save(tmp_path / "pano.png")  # 20:1
    inputs = resolve_inputs([str(tmp_path / "tiny.png"), str(tmp_path / "pano.png")])

    # OpenCV 5 itself copes with the panorama: ordinary selective search, boxes inside the image
    pano = P.propose_image(Image.open(tmp_path / "pano.png").convert("RGB"), max_size=500, min_size=20)
    assert pano.method == "selective-search" and len(pano.boxes) > 0
    assert pano.boxes[:, 2].max() <= 2000 and pano.boxes[:, 3].max() <= 100
    assert (pano.boxes[:, 3] - pano.boxes[:, 1]).min() >= 20

    real = P.opencv_selective_search

    def asserting(bgr, mode="fast", seed=0):
        if bgr.shape[1] > 10 * bgr.shape[0]:
            cv2.cvtColor(bgr[:0], cv2.COLOR_BGR2HSV)  # a real OpenCV assertion (empty input)
        return real(bgr, mode, seed)

    monkeypatch.setattr(P, "opencv_selective_search", asserting)
    out = tmp_path / "p.h5"
    summary = P.run_propose(inputs, out, workers=1, progress=False)
    assert summary["processed"] == 2 and summary["fallbacks"] == 2
    with P.load(out) as r:
        np.testing.assert_allclose(r.boxes("tiny"), [[0, 0, 1, 1]])
        tiny, info = r.info("tiny"), r.info("pano")
        assert tiny["method"] == "sliding-window" and tiny["fallback"] and "too small" in tiny["note"]
        assert info["method"] == "sliding-window" and info["fallback"] and "OpenCV" in info["note"]
        np.testing.assert_allclose(r.boxes("pano"), P.sliding_windows(2000, 100, 20))
        assert r.image_size("pano") == (2000, 100)
    text = " ".join(rec.getMessage() for rec in records)
    assert "tiny: fell back to sliding windows" in text and "pano: fell back" in text


def test_grayscale_png_and_bad_images_are_skipped(tmp_path, records):
    blocks_image(120, 90, seed=2, mode="L").save(tmp_path / "gray.png")
    assert Image.open(tmp_path / "gray.png").mode == "L"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    inputs = resolve_inputs([str(tmp_path / "gray.png"), str(tmp_path / "broken.jpg")])
    inputs.append(ImageInput("missing", tmp_path / "missing.jpg"))
    out = tmp_path / "p.h5"
    summary = P.run_propose(inputs, out, P.ProposalConfig(min_size=10), workers=1, progress=False)
    assert (summary["processed"], summary["skipped"]) == (1, 2)
    with P.load(out) as r:
        assert r.ids() == ["gray"] and "broken" not in r and "missing" not in r
        assert r.image_size("gray") == (120, 90) and len(r.boxes("gray")) > 0
        assert r.info("gray")["method"] == "selective-search"
    text = " ".join(rec.getMessage() for rec in records)
    assert "skipping broken" in text and "skipping missing" in text and "not found" in text
    with pytest.raises(UserError, match="no image could be processed"):
        P.run_propose(inputs[1:], tmp_path / "none.h5", workers=1, progress=False)


# ---------------------------------------------------------------------------------------------- store

def test_refuses_mismatched_settings_and_overwrite_works(tmp_path):
    inputs = write_images(tmp_path / "imgs", 2, size=(64, 48))
    out = tmp_path / "p.h5"
    P.run_propose(inputs, out, P.ProposalConfig(limit=50), workers=1, progress=False)
    again = P.run_propose(inputs, out, P.ProposalConfig(limit=50), workers=1, progress=False)
    assert (again["processed"], again["resumed"]) == (0, 2)
    with pytest.raises(UserError, match=r"different settings: mode='fast' \(now 'quality'\).*--overwrite"):
        P.run_propose(inputs, out, P.ProposalConfig(limit=50, mode="quality"), workers=1, progress=False)
    with pytest.raises(UserError, match="limit=50"):
        P.run_propose(inputs, out, workers=1, progress=False)
    fresh = P.run_propose(inputs, out, P.ProposalConfig(mode="quality"), workers=1, progress=False, overwrite=True)
    assert fresh["processed"] == 2
    with P.load(out) as r:
        assert r.attrs["mode"] == "quality" and r.attrs["limit"] is None and r.attrs["min_size"] == 20
        assert r.attrs["version"] and r.attrs["format"] == "rcnn-proposals"
    assert (tmp_path / "p.h5.config.json").is_file()
    with pytest.raises(UserError, match="not a proposals file"):
        h5py.File(tmp_path / "other.h5", "w").close()
        P.load(tmp_path / "other.h5")
    with pytest.raises(UserError, match="not found"):
        P.load(tmp_path / "nope.h5")


def test_parts_of_a_killed_run_are_read_then_resumed(tmp_path):
    """A run that died with two images published and a third in its open part: the reader sees the
    two (read only), and the rerun redoes only the third and equals an uninterrupted run."""
    from rcnn_cli.io.store import ImageStore, parts_dir
    from functools import partial

    inputs = write_images(tmp_path / "imgs", 3, size=(64, 48))
    ref = tmp_path / "ref.h5"
    P.run_propose(inputs, ref, workers=1, progress=False)
    out = tmp_path / "p.h5"
    cfg = P.ProposalConfig(limit=None)
    attrs, _ = P._file_attrs({"method": "selective-search", "mode": "fast", "max_size": 500, "min_size": 20.0,
                              "limit": 0, "seed": 0, "filter_min_size": 20.0, "filter_limit": 0},
                             None, None, out, 3, "rcnn propose")
    store = ImageStore(out, attrs, group=P.GROUP, check=P._checker(attrs), what="propose", checkpoint_seconds=0)
    store.__enter__()
    for order, inp in enumerate(inputs[:2]):
        store.add(inp.image_id, order, partial(P._write_image, rec=P._work((inp.image_id, str(inp.path), {"min_size": 20}))))
    store.checkpoint_seconds = 1e9
    store.add(inputs[2].image_id, 2, partial(P._write_image, rec=P._work((inputs[2].image_id, str(inputs[2].path), {}))))
    store._part.close()  # "killed": the open part never renamed
    store._unlock()
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.h5"))) == 2
    with P.load(out) as r:
        assert r.ids() == ["img00", "img01"]  # from the published parts
        np.testing.assert_array_equal(r.boxes("img01"), contents(ref)["img01"][0])
    summary = P.run_propose(inputs, out, cfg, workers=1, progress=False)
    assert (summary["processed"], summary["resumed"]) == (1, 2)
    assert not parts_dir(out).exists()
    a, b = contents(out), contents(ref)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory):
    """Eight images and an uninterrupted reference run over them (shared by both kill tests)."""
    root = tmp_path_factory.mktemp("kill")
    inputs = write_images(root / "imgs", 8, size=(256, 192))
    P.run_propose(inputs, root / "ref.h5", workers=1, progress=False)
    return root, contents(root / "ref.h5")


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path, kill_data):
    """Real SIGKILL of `rcnn propose` halfway (checkpoint 0: a part published after every image, so
    the kill can land inside a publication), then the same command again."""
    checkpoint = 0
    root, ref_c = kill_data
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "rcnn_cli", "propose", str(root / "imgs"), "--out", str(out), "-j", "1",
           "--no-progress", "--checkpoint-seconds", str(checkpoint)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with P.load(out) as r:
                done = len(r.ids())
        except (UserError, OSError):
            pass
        if done >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parts.exists()
    with P.load(out) as r:  # opens, and every complete image is intact
        partial = {i: r.boxes(i) for i in r.ids()}
    assert 3 <= len(partial) < 8
    for k, v in partial.items():
        np.testing.assert_array_equal(v, ref_c[k][0])
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stderr
    got = contents(out)
    assert sorted(got) == sorted(ref_c)
    for k in ref_c:
        np.testing.assert_array_equal(got[k][0], ref_c[k][0])
        assert got[k][1:] == ref_c[k][1:]
    assert not parts.exists()


def test_workers_pool_matches_single_process(tmp_path):
    inputs = write_images(tmp_path / "imgs", 3, size=(64, 48))
    P.run_propose(inputs, tmp_path / "one.h5", workers=1, progress=False)
    s = P.run_propose(inputs, tmp_path / "two.h5", workers=2, progress=False)
    assert s["workers"] == 2
    a, b = contents(tmp_path / "one.h5"), contents(tmp_path / "two.h5")
    assert list(a) == list(b) == [i.image_id for i in inputs]  # input order kept
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])


# ---------------------------------------------------------------------------------------------- recall

def test_recall_and_mabo_on_a_hand_made_case(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (100, 100)).save(tmp_path / f"{name}.png")
    fixed = {
        "a": np.array([[0, 0, 10, 10], [0, 0, 20, 10]], np.float32),  # IoU 1.0 and 0.5 with gt1
        "b": np.array([[50, 50, 90, 90], [0, 0, 30, 30]], np.float32),
    }
    calls = iter(["a", "b"])

    def proposer(image):
        return fixed[next(calls)]

    inputs = resolve_inputs([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    out = tmp_path / "fixed.h5"
    P.run_propose(inputs, out, P.ProposalConfig(min_size=0), proposer=proposer, attrs={"method": "fixed"},
                  progress=False)
    ds = Dataset(root=tmp_path, split="test", classes=["cat", "dog"], records=[
        ImageRecord("a", tmp_path / "a.png", 100, 100, np.array([[0, 0, 10, 10], [60, 60, 80, 80]], np.float32), ["cat", "dog"]),
        # b: dog gt (40,40,90,90): IoU with (50,50,90,90) = 1600/2500 = 0.64; zero-area gt ignored
        ImageRecord("b", tmp_path / "b.png", 100, 100, np.array([[40, 40, 90, 90], [5, 5, 5, 9]], np.float32), ["dog", "cat"]),
        ImageRecord("c", tmp_path / "c.png", 100, 100, np.array([[0, 0, 30, 30]], np.float32), ["cat"]),  # not in file
    ])
    s = recall_stats(ds, out)
    # best overlaps: cat a 1.0, cat c 0 (missing image); dog a 0 (no overlap), dog b 0.64
    assert s["num_gt"] == 4 and s["missing_images"] == 1
    assert s["recall@0.5"] == pytest.approx(2 / 4) and s["recall@0.7"] == pytest.approx(1 / 4)
    assert s["per_class"]["cat"]["abo"] == pytest.approx(0.5) and s["per_class"]["dog"]["abo"] == pytest.approx(0.32)
    assert s["mabo"] == pytest.approx((0.5 + 0.32) / 2) and s["abo"] == pytest.approx(1.64 / 4)
    assert s["boxes_per_image"] == pytest.approx(4 / 3)
    # top-1 per image: a -> (0,0,10,10) still 1.0 for cat; b -> (50,50,90,90) 0.64
    assert s["curve"]["num_proposals"] == [1, 2]
    assert s["curve"]["recall@0.5"] == [pytest.approx(0.5), pytest.approx(0.5)]
    with P.load(out) as r:
        assert r.attrs["method"] == "fixed"
    pngs = plot_recall(s, tmp_path / "plots")
    assert all(p.is_file() and p.stat().st_size > 1000 for p in pngs)


def test_two_propose_shards_merged_equal_one_run(shapes_root, tmp_path):
    from rcnn_cli.cli import main

    base = ["propose", str(shapes_root), "--split", "trainval", "--max-size", "128", "--limit", "30",
            "--workers", "1", "--no-progress"]
    for args in ([*base, "--out", str(tmp_path / "all.h5")],
                 [*base, "--out", str(tmp_path / "s0.h5"), "--shard", "0/2"],
                 [*base, "--out", str(tmp_path / "s1.h5"), "--shard", "1/2"],
                 ["merge-proposals", str(tmp_path / "s1.h5"), str(tmp_path / "s0.h5"), "--out", str(tmp_path / "m.h5")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0, args
    with P.load(tmp_path / "all.h5") as a, P.load(tmp_path / "m.h5") as m, P.load(tmp_path / "s0.h5") as s0:
        assert len(s0.ids()) == 4 and m.ids() == a.ids()  # the unsharded order comes back
        for i in a.ids():
            np.testing.assert_array_equal(m.boxes(i), a.boxes(i))
            assert m.image_size(i) == a.image_size(i)
    with pytest.raises(SystemExit) as e:  # other settings are refused
        main([*base[:-5], "--max-size", "96", "--limit", "30", "--workers", "1", "--no-progress", "--out",
              str(tmp_path / "other.h5"), "--shard", "1/2"])
    assert e.value.code == 0
    with pytest.raises(UserError, match="other settings"):
        P.merge_proposals([tmp_path / "s0.h5", tmp_path / "other.h5"], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_two_detect_shards_concatenated_equal_one_run(tmp_path):
    import json

    from rcnn_cli.detector import DetectConfig
    from rcnn_cli.workflows.detect import detect

    fixture = Path(__file__).parent / "fixtures" / "runs_e8b1e22"
    folder = fixture / "images"
    kw = dict(config=DetectConfig(score_threshold=0.001), device="cpu", progress=False)
    detect([str(folder)], fixture / "faster", out=str(tmp_path / "all.jsonl"), **kw)
    for k in (0, 1):
        detect([str(folder)], fixture / "faster", out=str(tmp_path / f"s{k}.jsonl"), shard=f"{k}/2", **kw)
    lines = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    whole = lines(tmp_path / "all.jsonl")
    parts = lines(tmp_path / "s0.jsonl") + lines(tmp_path / "s1.jsonl")
    key = lambda r: r["image_id"]  # noqa: E731
    assert [json.dumps({k: v for k, v in r.items() if k != "timings"}) for r in sorted(parts, key=key)] == \
        [json.dumps({k: v for k, v in r.items() if k != "timings"}) for r in sorted(whole, key=key)]
    assert len(lines(tmp_path / "s0.jsonl")) == 1
