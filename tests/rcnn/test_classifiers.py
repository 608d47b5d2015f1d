"""R-CNN SVMs (hard-negative mining) and bbox ridge regressors, on small synthetic feature stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn_cli.boxes import decode, encode
from rcnn_cli.rcnn.classifiers import (
    class_overlaps,
    compute_feature_scale,
    fit_linear_svm,
    ridge_fit,
    ridge_lambda_cv,
    svm_objective,
    train_bbox_regressors,
    train_svms,
)


class FakeReader:
    """In-memory stand-in for rcnn_cli.rcnn.features.FeatureReader."""

    def __init__(self, items: dict[str, dict[str, np.ndarray]], classes: list[str]):
        self.items, self.classes, self.attrs = items, classes, {}

    def ids(self) -> list[str]:
        return list(self.items)

    def get(self, image_id: str) -> dict[str, np.ndarray]:
        return self.items[image_id]


def _item(features, boxes, gt, labels):
    boxes = np.asarray(boxes, np.float32)
    return {"features": np.asarray(features, np.float32), "boxes": boxes, "gt": np.asarray(gt, bool),
            "labels": np.asarray(labels, np.int64), "overlaps": np.zeros(len(boxes), np.float32)}


def test_decode_encode_roundtrip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (50, 2))
    wh = rng.uniform(5, 100, (50, 2))
    props = torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32)
    gt = props + torch.tensor(rng.uniform(-2, 2, (50, 4)), dtype=torch.float32)
    d = encode(gt, props)
    torch.testing.assert_close(decode(d, props).reshape(-1, 4), gt, atol=1e-3, rtol=0)
    # R-CNN's targets with weights (1, 1, 1, 1), by hand for one box.
    p, g = torch.tensor([[10.0, 20.0, 30.0, 60.0]]), torch.tensor([[12.0, 18.0, 36.0, 58.0]])
    expect = [(24 - 20) / 20, (38 - 40) / 40, np.log(24 / 20), np.log(40 / 40)]
    np.testing.assert_allclose(encode(g, p).numpy()[0], expect, atol=1e-6)


def test_class_overlaps_per_class():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    gts = np.array([[0, 0, 10, 20], [20, 20, 30, 30]], np.float32)
    ovl = class_overlaps(boxes, gts, np.array([1, 2]), 3)
    np.testing.assert_allclose(ovl, [[0.5, 0, 0], [0, 1, 0]], atol=1e-6)


def test_feature_scale_gives_mean_norm_20():
    rng = np.random.default_rng(1)
    items = {f"i{k}": _item(rng.normal(size=(30, 8)) * 3, np.zeros((30, 4)), np.zeros(30), np.zeros(30)) for k in range(3)}
    reader = FakeReader(items, ["a"])
    s = compute_feature_scale(reader)
    all_f = np.concatenate([it["features"] for it in items.values()])
    assert np.linalg.norm(all_f * s, axis=1).mean() == pytest.approx(20.0, rel=1e-5)


def test_svm_separates_separable_case_and_is_optimal():
    rng = np.random.default_rng(0)
    x_pos = rng.normal(size=(40, 5)) + np.array([3, 0, 0, 0, 0])
    x_neg = rng.normal(size=(120, 5)) - np.array([3, 0, 0, 0, 0])
    w, b = fit_linear_svm(x_pos, x_neg, C=1.0, bias=10.0, pos_weight=2.0, tol=1e-8, max_iter=200000)
    assert ((x_pos @ w + b) > 0).all() and ((x_neg @ w + b) < 0).all()
    assert w[0] > 0 and abs(w[0]) > 3 * np.abs(w[1:]).max()
    # liblinear's hinge (L1-loss) solution is a minimum of R-CNN's objective: no random step improves it.
    f0 = svm_objective(w.astype(np.float64), b, x_pos, x_neg, 1.0, 10.0, 2.0)
    for _ in range(50):
        d = rng.normal(size=6) * 1e-3
        assert svm_objective(w + d[:5], b + 10.0 * d[5], x_pos, x_neg, 1.0, 10.0, 2.0) >= f0 - 1e-6


def _mining_reader():
    """Class 'a': positives near +e0; easy negatives far on -e0; hard negatives close to the boundary."""
    rng = np.random.default_rng(0)
    items, truth = {}, {}
    for k in range(6):
        n_easy, n_hard = 40, 3
        noise = np.array([0.1, 0.05, 0.05, 0.05])
        pos = rng.normal(size=(2, 4)) * noise + [4, 0, 0, 0]
        easy = rng.normal(size=(n_easy, 4)) * noise + [-6, 0, 0, 0]
        hard = rng.normal(size=(n_hard, 4)) * noise + [2.5, 0, 0, 0]  # inside the soft margin
        feats = np.concatenate([pos, easy, hard])
        gt_boxes = [[0, 0, 10, 10], [50, 50, 60, 60]]
        far = [[100 + i, 100, 110 + i, 110] for i in range(n_easy + n_hard)]  # IoU 0 with the gts
        items[f"img{k}"] = _item(feats, gt_boxes + far, [1, 1] + [0] * (n_easy + n_hard), [1, 1] + [0] * (n_easy + n_hard))
        truth[f"img{k}"] = (np.arange(2, 2 + n_easy), np.arange(2 + n_easy, 2 + n_easy + n_hard))
    return FakeReader(items, ["a"]), truth


def test_hard_negative_mining_keeps_hard_drops_easy():
    reader, truth = _mining_reader()
    svm, stats = train_svms(reader, C=0.03, bias=10.0, pos_weight=2.0, retrain_limit=50, feature_scale=1.0,
                            progress=False, keep_cache_keys=True)
    cache = set(map(tuple, stats["a"]["cache"]))
    hard = {(i, int(r)) for i, (_, h) in truth.items() for r in h}
    easy = {(i, int(r)) for i, (e, _) in truth.items() for r in e}
    assert hard <= cache  # every hard negative kept
    assert not (easy & cache)  # every easy one evicted (or never added after the first model)
    assert stats["a"]["retrains"] >= 2 and stats["a"]["evicted"] > 0
    # Easy negatives end far below the eviction threshold.
    feats_all = np.concatenate([reader.get(i)["features"] for i in reader.ids()])
    s = svm.scores(feats_all)[:, 0]
    assert s[feats_all[:, 0] < -3].max() < -1.2


def test_negatives_use_overlap_with_the_class_only():
    # A region overlapping a 'b' ground truth perfectly is still a negative for 'a'.
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 4)).astype(np.float32)
    item = _item(feats, [[0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 61]], [1, 1, 0], [1, 2, 2])
    reader = FakeReader({"x": item}, ["a", "b"])
    _, stats = train_svms(reader, feature_scale=1.0, progress=False, keep_cache_keys=True)
    assert {r for _, r in stats["a"]["cache"]} == {1, 2}
    assert {r for _, r in stats["b"]["cache"]} == {0}


def test_bbox_regression_recovers_known_shift():
    rng = np.random.default_rng(0)
    items = {}
    for k in range(20):
        gt = np.array([[20, 30, 80, 90]], np.float32) + rng.uniform(0, 50)
        w, h = gt[0, 2] - gt[0, 0], gt[0, 3] - gt[0, 1]
        # every proposal is the gt moved by +10% of its width to the right and 5% up: IoU >= 0.6
        props = gt + np.array([0.1 * w, -0.05 * h, 0.1 * w, -0.05 * h], np.float32)
        props = np.repeat(props, 4, axis=0) + rng.normal(scale=0.5, size=(4, 4)).astype(np.float32)
        boxes = np.concatenate([gt, props])
        feats = rng.normal(size=(5, 16))
        items[f"i{k}"] = _item(feats, boxes, [1, 0, 0, 0, 0], [1, 1, 1, 1, 1])
    reader = FakeReader(items, ["obj"])
    reg, stats = train_bbox_regressors(reader, lam=1000.0, min_overlap=0.6, progress=False)
    assert stats["obj"]["examples"] == 100
    gt = np.array([[100, 100, 200, 150]], np.float32)
    prop = gt + np.array([10, -2.5, 10, -2.5], np.float32)
    out = reg.predict(rng.normal(size=(1, 16)), prop, np.array([0]))
    # ground-truth rows (target 0) are 20% of the examples: the mean shift is 80% of the true one
    expected = prop - 0.8 * (prop - gt)
    np.testing.assert_allclose(out, expected, atol=1.0)
    assert np.abs(out - gt).sum() < 0.5 * np.abs(prop - gt).sum()


def test_ridge_fit_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    y = x @ np.array([[1.0], [2.0], [0.0], [-1.0], [0.5]]) + 3.0
    w, b = ridge_fit(x, y, 1e-9)
    np.testing.assert_allclose(w[:, 0], [1, 2, 0, -1, 0.5], atol=1e-6)
    np.testing.assert_allclose(b, [3.0], atol=1e-6)
    # dual path (N < D) equals the primal
    x2, y2 = rng.normal(size=(4, 10)), rng.normal(size=(4, 2))
    w_d, b_d = ridge_fit(x2, y2, 2.0)
    xc, yc = x2 - x2.mean(0), y2 - y2.mean(0)
    w_p = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(10), xc.T @ yc)
    np.testing.assert_allclose(w_d, w_p, atol=1e-8)


def test_ridge_lambda_cv_errors_are_held_out_ridge_fits():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    y = x @ rng.normal(size=(8, 2)) + rng.normal(scale=0.5, size=(40, 2))
    groups = np.repeat(np.arange(10), 4)
    lam, curve = ridge_lambda_cv(x, y, groups, grid=(0.1, 10.0), folds=5)
    # fold k holds out the groups at positions k, k+5 of the seeded permutation; recompute one lambda by hand
    order = np.random.default_rng(0).permutation(np.arange(10))
    fold = np.array([{g: i % 5 for i, g in enumerate(order)}[g] for g in groups])
    err = 0.0
    for k in range(5):
        w, b = ridge_fit(x[fold != k], y[fold != k], 10.0)
        err += ((x[fold == k] @ w + b - y[fold == k]) ** 2).sum()
    assert curve[10.0] == pytest.approx(err / y.size, rel=1e-9)
    assert lam == min(curve, key=curve.get)


def test_ridge_lambda_cv_follows_the_signal_and_keeps_groups_apart():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 6))
    clean = x @ rng.normal(size=(6, 4))
    assert ridge_lambda_cv(x, clean, np.arange(60) // 3)[0] == 1.0  # a noiseless linear target: the least penalty
    # targets that are pure noise, each object seen by 6 near-identical regions: a split that ignored the
    # images would reward memorising them; split by image, a heavy penalty (near the mean) wins
    base = rng.normal(size=(20, 6))
    xg = np.repeat(base, 6, axis=0) + rng.normal(scale=0.01, size=(120, 6))
    yg = np.repeat(rng.normal(size=(20, 4)), 6, axis=0)
    assert ridge_lambda_cv(xg, yg, np.arange(120) // 6)[0] >= 300.0
    assert ridge_lambda_cv(xg, yg, np.arange(120))[0] <= 10.0  # rows as groups: the leak the grouping prevents
    assert ridge_lambda_cv(x, clean, np.zeros(60)) == (100.0, {})  # one image: the grid's middle, no curve


def test_bbox_regressors_choose_lambda_per_class_when_not_given():
    rng = np.random.default_rng(0)
    items = {}
    for k in range(12):
        gt = np.array([[20, 30, 80, 90]], np.float32) + rng.uniform(0, 50)
        props = np.repeat(gt, 4, axis=0) + rng.normal(scale=3.0, size=(4, 4)).astype(np.float32)
        items[f"i{k}"] = _item(rng.normal(size=(5, 16)), np.concatenate([gt, props]), [1, 0, 0, 0, 0], [1] * 5)
    _, stats = train_bbox_regressors(FakeReader(items, ["obj"]), lam=None, min_overlap=0.6, progress=False)
    curve = stats["obj"]["lambda_cv_mse"]
    assert len(curve) == 9 and stats["obj"]["lambda"] == min(curve, key=curve.get)
    _, given = train_bbox_regressors(FakeReader(items, ["obj"]), lam=5.0, min_overlap=0.6, progress=False)
    assert given["obj"]["lambda"] == 5.0 and given["obj"]["lambda_cv_mse"] == {}
