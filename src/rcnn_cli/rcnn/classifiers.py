"""R-CNN's per-class linear SVMs (with hard-negative mining) and bounding-box ridge regressors.

Both read a features store (:func:`rcnn_cli.rcnn.features.load_features`): per image ``features (N, D)``,
``boxes (N, 4)``, ``gt (N,)`` (ground-truth rows), ``overlaps``/``labels`` (max IoU with any ground
truth and its class ``1..K``).

Features are scaled by one scalar so that their mean L2 norm is 20 (R-CNN's ``feat_norm_mean``);
the scale is stored with the model and applied at test time.

SVM training follows R-CNN's ``rcnn_train.m``: positives are the ground-truth boxes of the class;
negatives are regions whose IoU with every ground truth *of that class* is below 0.3; one pass over
the images in file order, starting from ``w = 0`` so that the first image's negatives are all hard;
a negative is hard when it scores above ``-1.0001``; after ``retrain_limit`` new hard negatives the
SVM is retrained (liblinear, L2-regularised L1-loss (hinge) dual solver, ``-s 3``, with the bias
feature ``bias`` regularised like a weight, as R-CNN's ``-B``) and negatives scoring below ``-1.2``
are evicted from the cache; a final retrain ends the pass.

Box regression follows R-CNN's ``rcnn_train_bbox_regressor.m``: class-specific ridge regression
from features to the targets ``(dx, dy, dw, dh)`` of :func:`rcnn_cli.boxes.encode` (weights
``(1, 1, 1, 1)``) for regions with IoU >= 0.6 to a ground truth of that class; targets are
standardised per class (mean/std stored) and the intercept is not regularised. The paper fixes the
ridge ``lambda`` at 1000 (``--lambda 1000``, ``--defaults classic``); by default each class's is the
one of ``LAMBDA_GRID`` with the lowest held-out error in 5-fold cross-validation over its images
(:func:`ridge_lambda_cv`), since the features' dimension and the regions' count vary with the layer
and the data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from rcnn_cli.boxes import decode, encode, iou_matrix
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger, progress_bar

#: R-CNN's target mean L2 norm of the features.
TARGET_NORM = 20.0
#: R-CNN's box-coding weights.
BBOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: Ridge ``lambda`` values cross-validation chooses from (features at mean norm ``TARGET_NORM``).
LAMBDA_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
#: The R-CNN paper's ridge ``lambda`` (``--defaults classic``).
PAPER_LAMBDA = 1000.0


@dataclass(frozen=True)
class SVMConfig:
    """R-CNN's SVM training settings (liblinear hinge loss, hard-negative mining): their one home."""

    C: float = 0.001             # regularisation
    bias: float = 10.0           # bias feature value (liblinear -B; the bias is regularised)
    pos_weight: float = 2.0      # loss weight of positives (liblinear -w1)
    neg_overlap: float = 0.3     # negatives: IoU below this with every box of the class
    hard_threshold: float = -1.0001  # a cached negative scoring above this is hard
    easy_threshold: float = -1.2     # a cached negative scoring below this is dropped
    retrain_limit: int = 2000    # retrain after this many new hard negatives
    passes: int = 1              # mining passes over the features

    def __post_init__(self) -> None:
        if self.C <= 0 or self.bias < 0 or self.pos_weight <= 0:
            raise UserError("--C and --pos-weight must be positive, --bias non-negative")


@dataclass(frozen=True)
class BBoxConfig:
    """R-CNN's box-regression settings (class-specific ridge regressors)."""

    lam: float | None = None     # ridge regularisation (--lambda); None: per class by ridge_lambda_cv
    min_overlap: float = 0.6     # train on regions with at least this IoU to a ground truth

    def __post_init__(self) -> None:
        if (self.lam is not None and self.lam < 0) or not 0 < self.min_overlap <= 1:
            raise UserError("--lambda must be >= 0 and --min-overlap in (0, 1]")


_S, _B = SVMConfig(), BBoxConfig()


class FeatureSource(Protocol):
    """What the trainers need from a features store (``rcnn_cli.rcnn.features.FeatureReader``)."""

    attrs: dict
    classes: list[str]

    def ids(self) -> list[str]: ...

    def get(self, image_id: str) -> dict[str, np.ndarray]: ...


# --------------------------------------------------------------------------------------- helpers


def _check_labelled(item: dict[str, np.ndarray], image_id: str) -> None:
    for key in ("features", "boxes", "gt", "labels"):
        if key not in item:
            raise UserError(f"features store: image {image_id} has no '{key}' (extract features from a labelled dataset)")


def class_overlaps(boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU of each box ``(N, 4)`` with the closest ground truth of each class: ``(N, K)`` float32.

    ``gt_labels`` are class indices ``1..K``; a class with no ground truth in the image gives 0.
    """
    out = np.zeros((len(boxes), num_classes), np.float32)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return out
    iou = iou_matrix(boxes, gt_boxes)
    for k in range(1, num_classes + 1):
        cols = gt_labels == k
        if cols.any():
            out[:, k - 1] = iou[:, cols].max(axis=1)
    return out


def _gt_rows(item: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    gt = item["gt"].astype(bool)
    return item["boxes"][gt].astype(np.float32), item["labels"][gt].astype(np.int64)


def _training_inputs(reader: FeatureSource, classes: Sequence[str] | None,
                     feature_scale: float | None) -> tuple[list[str], list[str], float]:
    """The classes, complete image ids and feature scale a trainer works with (UserError if empty)."""
    classes = list(classes if classes is not None else reader.classes)
    if not classes:
        raise UserError("features store records no classes (extract features from a labelled dataset)")
    ids = reader.ids()
    if not ids:
        raise UserError("features store has no complete images")
    scale = float(feature_scale) if feature_scale is not None else compute_feature_scale(reader)
    return classes, ids, scale


def compute_feature_scale(reader: FeatureSource, target_norm: float = TARGET_NORM, max_images: int | None = 200,
                          seed: int = 0) -> float:
    """Scalar ``s`` so that ``s * features`` has mean L2 norm ``target_norm`` (R-CNN: 20).

    Averages over all regions of up to ``max_images`` images drawn at random (all when ``None``).
    """
    ids = reader.ids()
    if not ids:
        raise UserError("features store has no complete images")
    if max_images is not None and len(ids) > max_images:
        rng = np.random.default_rng(seed)
        ids = [ids[i] for i in sorted(rng.choice(len(ids), max_images, replace=False))]
    total, count = 0.0, 0
    for image_id in ids:
        feats = np.asarray(reader.get(image_id)["features"], np.float32)
        total += float(np.linalg.norm(feats, axis=1).sum())
        count += len(feats)
    if count == 0 or total <= 0:
        raise UserError("features store: cannot compute a feature scale (no regions or all-zero features)")
    return float(target_norm * count / total)


# ------------------------------------------------------------------------------------------- SVMs


@dataclass
class SVMModel:
    """One linear SVM per class. ``weights (K, D)``, ``bias (K,)``; scores on scaled features."""

    weights: np.ndarray
    bias: np.ndarray
    feature_scale: float
    classes: list[str]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """SVM margins ``(N, K)`` for raw (unscaled) features ``(N, D)``."""
        x = np.asarray(features, np.float32) * np.float32(self.feature_scale)
        return x @ self.weights.T.astype(np.float32) + self.bias.astype(np.float32)


def fit_linear_svm(x_pos: np.ndarray, x_neg: np.ndarray, C: float = 0.001, bias: float = 10.0,
                   pos_weight: float = 2.0, max_iter: int = 20000, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """Train one binary linear SVM with liblinear as R-CNN does (``-s 3 -c C -B bias -w1 pos_weight``).

    Returns ``(w (D,), b)`` such that the score is ``x @ w + b``. L1 (hinge) loss, dual solver; the
    bias is a constant feature of value ``bias`` whose weight is regularised like the others.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    if len(x_pos) == 0 or len(x_neg) == 0:
        raise ValueError("need at least one positive and one negative example")
    x = np.concatenate([x_pos, x_neg]).astype(np.float64, copy=False)
    y = np.concatenate([np.ones(len(x_pos)), -np.ones(len(x_neg))])
    svm = LinearSVC(C=C, loss="hinge", dual=True, fit_intercept=True, intercept_scaling=bias,
                    class_weight={1: pos_weight, -1: 1.0}, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    # sklearn orders classes_ as [-1, 1]: coef_ is for the positive class.
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def svm_objective(w: np.ndarray, b: float, x_pos: np.ndarray, x_neg: np.ndarray, C: float, bias: float,
                  pos_weight: float) -> float:
    """R-CNN/liblinear primal objective ``0.5 (|w|^2 + (b/B)^2) + C sum_i c_i max(0, 1 - y_i f(x_i))``."""
    wb = b / bias
    hinge_pos = np.maximum(0.0, 1.0 - (x_pos @ w + b)).sum()
    hinge_neg = np.maximum(0.0, 1.0 + (x_neg @ w + b)).sum()
    return float(0.5 * (w @ w + wb * wb) + C * (pos_weight * hinge_pos + hinge_neg))


@dataclass
class _NegCache:
    feats: list[np.ndarray] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    seen: set = field(default_factory=set)
    new_since_retrain: int = 0

    def add(self, x: np.ndarray, keys: np.ndarray) -> int:
        fresh = np.array([k not in self.seen for k in keys.tolist()], bool) if len(keys) else np.zeros(0, bool)
        if not fresh.any():
            return 0
        self.feats.append(x[fresh])
        self.keys.append(keys[fresh])
        self.seen.update(keys[fresh].tolist())
        self.new_since_retrain += int(fresh.sum())
        return int(fresh.sum())

    @property
    def size(self) -> int:
        return len(self.seen)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.feats) > 1:
            self.feats = [np.concatenate(self.feats)]
            self.keys = [np.concatenate(self.keys)]
        if not self.feats:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return self.feats[0], self.keys[0]

    def evict(self, keep: np.ndarray) -> int:
        x, k = self.matrix()
        dropped = k[~keep]
        self.seen.difference_update(dropped.tolist())
        self.feats, self.keys = [x[keep]], [k[keep]]
        return int(len(dropped))


def train_svms(reader: FeatureSource, C: float = _S.C, bias: float = _S.bias, pos_weight: float = _S.pos_weight,
               neg_overlap: float = _S.neg_overlap, hard_threshold: float = _S.hard_threshold,
               easy_threshold: float = _S.easy_threshold, retrain_limit: int = _S.retrain_limit,
               passes: int = _S.passes, feature_scale: float | None = None,
               classes: list[str] | None = None, max_iter: int = 20000, progress: bool = True,
               keep_cache_keys: bool = False) -> tuple[SVMModel, dict[str, Any]]:
    """Train one linear SVM per class with R-CNN's hard-negative mining over a features store.

    Returns the model and per-class statistics (positives, cached negatives, retrains, objective,
    training accuracy on the final cache). ``classes`` defaults to ``reader.classes``.
    ``keep_cache_keys`` adds ``stats[class]["cache"]``: the ``(image_id, region row)`` of every
    negative left in the cache (for inspection and tests).
    """
    classes, ids, scale = _training_inputs(reader, classes, feature_scale)
    num_classes = len(classes)

    # Pass 1: the positives (ground-truth rows of each class).
    pos: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    dim = None
    for image_id in ids:
        item = reader.get(image_id)
        _check_labelled(item, image_id)
        feats = item["features"]
        dim = feats.shape[1]
        gt = item["gt"].astype(bool)
        for k in range(1, num_classes + 1):
            rows = gt & (item["labels"] == k)
            if rows.any():
                pos[k - 1].append(np.asarray(feats[rows], np.float32) * np.float32(scale))
    x_pos = [np.concatenate(p) if p else np.zeros((0, dim), np.float32) for p in pos]
    for name, xp in zip(classes, x_pos):
        if len(xp) == 0:
            logger.warning("class %s has no ground-truth boxes in the features store: its SVM never fires", name)

    weights = np.zeros((num_classes, dim), np.float32)
    biases = np.zeros(num_classes, np.float32)
    caches = [_NegCache() for _ in range(num_classes)]
    stats: dict[str, Any] = {c: {"positives": int(len(x_pos[i])), "retrains": 0, "evicted": 0} for i, c in enumerate(classes)}

    def retrain(k: int) -> None:
        x_neg, _ = caches[k].matrix()
        if len(x_pos[k]) == 0 or len(x_neg) == 0:
            return
        w, b = fit_linear_svm(x_pos[k], x_neg, C=C, bias=bias, pos_weight=pos_weight, max_iter=max_iter)
        weights[k], biases[k] = w, b
        stats[classes[k]]["retrains"] += 1
        caches[k].new_since_retrain = 0
        scores = x_neg @ w + b
        stats[classes[k]]["evicted"] += caches[k].evict(scores >= easy_threshold)

    with progress_bar(progress) as bar:
        task = bar.add_task("train-svm", total=len(ids) * passes, status="")
        for p in range(passes):
            for i, image_id in enumerate(ids):
                item = reader.get(image_id)
                x = np.asarray(item["features"], np.float32) * np.float32(scale)
                gt_boxes, gt_labels = _gt_rows(item)
                ovl = class_overlaps(item["boxes"], gt_boxes, gt_labels, num_classes)
                keys = np.int64(i) * 10_000_000 + np.arange(len(x), dtype=np.int64)
                for k in range(num_classes):
                    neg = ovl[:, k] < neg_overlap
                    if not neg.any():
                        continue
                    scores = x[neg] @ weights[k] + biases[k]
                    hard = scores > hard_threshold
                    if hard.any():
                        caches[k].add(x[neg][hard], keys[neg][hard])
                    if caches[k].new_since_retrain > retrain_limit:
                        retrain(k)
                bar.update(task, advance=1, status=f"pass {p + 1}/{passes} hard negatives " + " ".join(
                    f"{c}:{caches[k].size}" for k, c in enumerate(classes)))
            for k in range(num_classes):
                retrain(k)  # the final retrain of the pass
    for k, c in enumerate(classes):
        x_neg, keys = caches[k].matrix()
        s = stats[c]
        s["negatives"] = int(len(x_neg))
        if keep_cache_keys:
            s["cache"] = [(ids[int(key) // 10_000_000], int(key) % 10_000_000) for key in keys]
        if len(x_pos[k]) and len(x_neg):
            s["objective"] = svm_objective(weights[k].astype(np.float64), float(biases[k]), x_pos[k].astype(np.float64),
                                           x_neg.astype(np.float64), C, bias, pos_weight)
            s["train_pos_acc"] = float(((x_pos[k] @ weights[k] + biases[k]) > 0).mean())
            s["train_neg_acc"] = float(((x_neg @ weights[k] + biases[k]) < 0).mean())
        else:
            weights[k], biases[k] = 0.0, -10.0  # a class never seen: never fires
        logger.info("svm %s: %d positives, %d hard negatives, %d retrains%s", c, s["positives"], s["negatives"],
                    s["retrains"], f", objective {s['objective']:.4f}" if "objective" in s else "")
    return SVMModel(weights, biases, scale, classes), stats


# ---------------------------------------------------------------------------------------- bbox reg


@dataclass
class BBoxRegressor:
    """Class-specific ridge regressors. ``weights (K, D, 4)``, ``bias (K, 4)`` predict standardised
    targets from scaled features; ``target_mean``/``target_std (K, 4)`` undo the standardisation."""

    weights: np.ndarray
    bias: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    feature_scale: float
    classes: list[str]

    def deltas(self, features: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """Box deltas ``(N, 4)`` for raw features ``(N, D)`` and classes ``(N,)`` in ``0..K-1``."""
        x = np.asarray(features, np.float32) * np.float32(self.feature_scale)
        class_index = np.asarray(class_index, np.int64)
        out = np.zeros((len(x), 4), np.float32)
        for k in np.unique(class_index):
            rows = class_index == k
            z = x[rows] @ self.weights[k] + self.bias[k]
            out[rows] = z * self.target_std[k] + self.target_mean[k]
        return out

    def predict(self, features: np.ndarray, boxes: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """Refined boxes ``(N, 4)`` float32: ``boxes`` moved by each row's class regressor."""
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32)
        d = self.deltas(features, class_index)
        return decode(torch.from_numpy(d), torch.as_tensor(np.asarray(boxes, np.float32)), BBOX_WEIGHTS).reshape(-1, 4).numpy()


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unregularised intercept: ``(w (D, T), b (T,))`` minimising
    ``|x w + b - y|^2 + lam |w|^2``. Solves in the primal or the dual, whichever is smaller."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    n, d = xc.shape
    if n >= d:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ yc)
    else:
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(n), yc)
    return w, my - mx @ w


def ridge_lambda_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: Sequence[float] = LAMBDA_GRID,
                    folds: int = 5, max_rows: int = 2000, seed: int = 0) -> tuple[float, dict[float, float]]:
    """The ridge ``lam`` of ``grid`` with the lowest held-out squared error in ``folds``-fold
    cross-validation, folds split by ``groups`` (``(N,)`` image of each row: overlapping regions of one
    object never sit on both sides); at most ``max_rows`` rows, whole groups drawn at random. Returns
    ``(lam, {lam: held-out mean squared error})``; ``(grid's middle, {})`` with fewer than 2 groups.

    Each fold solves every ``lam`` from one eigendecomposition of its training kernel ``X X^T``."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(np.unique(groups))
    if len(names) < 2:
        return float(grid[len(grid) // 2]), {}
    counts = dict(zip(*np.unique(groups, return_counts=True)))
    keep = names[np.cumsum([counts[g] for g in names]) <= max_rows]
    keep = keep if len(keep) >= 2 else names[:2]
    rows = np.isin(groups, keep)
    x, y, groups = np.asarray(x[rows], np.float64), np.asarray(y[rows], np.float64), groups[rows]
    fold_of = {g: i % min(folds, len(keep)) for i, g in enumerate(keep)}
    fold = np.array([fold_of[g] for g in groups])
    errors = np.zeros(len(grid))
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        mx, my = x[tr].mean(axis=0), y[tr].mean(axis=0)
        xt, yt = x[tr] - mx, y[tr] - my
        vals, vecs = np.linalg.eigh(xt @ xt.T)
        reach = (x[te] - mx) @ xt.T @ vecs       # held-out rows through the training kernel's eigenvectors
        proj = vecs.T @ yt
        for i, lam in enumerate(grid):
            pred = reach @ (proj / (np.maximum(vals, 0.0) + lam)[:, None]) + my
            errors[i] += ((pred - y[te]) ** 2).sum()
    errors /= len(y) * y.shape[1]
    best = int(np.argmin(errors))
    return float(grid[best]), {float(g): float(e) for g, e in zip(grid, errors)}


def train_bbox_regressors(reader: FeatureSource, lam: float | None = _B.lam, min_overlap: float = _B.min_overlap,
                          feature_scale: float | None = None, classes: list[str] | None = None,
                          progress: bool = True) -> tuple[BBoxRegressor, dict[str, Any]]:
    """Fit R-CNN's class-specific box regressors on regions with IoU >= ``min_overlap`` to a ground truth.

    Each region is matched to the ground truth (of any class) it overlaps most and trains that
    class's regressor; ground-truth rows themselves are included (target zero), as in R-CNN.
    ``lam`` ``None``: each class's own, chosen by :func:`ridge_lambda_cv` over its images.
    """
    classes, ids, scale = _training_inputs(reader, classes, feature_scale)
    num_classes = len(classes)
    xs: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    ys: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    gs: list[list[np.ndarray]] = [[] for _ in range(num_classes)]  # the image (index) of each row
    dim = None
    with progress_bar(progress) as bar:
        task = bar.add_task("train-bbox", total=len(ids), status="")
        for index, image_id in enumerate(ids):
            item = reader.get(image_id)
            _check_labelled(item, image_id)
            dim = item["features"].shape[1]
            gt_boxes, gt_labels = _gt_rows(item)
            bar.update(task, advance=1)
            if len(gt_boxes) == 0:
                continue
            boxes = np.asarray(item["boxes"], np.float32)
            iou = iou_matrix(boxes, gt_boxes)
            best = iou.argmax(axis=1)
            best_iou = iou[np.arange(len(boxes)), best]
            rows = best_iou >= min_overlap
            if not rows.any():
                continue
            targets = encode(torch.from_numpy(gt_boxes[best[rows]]), torch.from_numpy(boxes[rows]), BBOX_WEIGHTS).numpy()
            feats = np.asarray(item["features"][rows], np.float32) * np.float32(scale)
            cls = gt_labels[best[rows]]
            for k in np.unique(cls):
                sel = cls == k
                xs[k - 1].append(feats[sel])
                ys[k - 1].append(targets[sel])
                gs[k - 1].append(np.full(int(sel.sum()), index))
    weights = np.zeros((num_classes, dim, 4), np.float32)
    bias = np.zeros((num_classes, 4), np.float32)
    mean = np.zeros((num_classes, 4), np.float32)
    std = np.ones((num_classes, 4), np.float32)
    stats: dict[str, Any] = {}
    for k, name in enumerate(classes):
        if not xs[k]:
            logger.warning("class %s has no regions with IoU >= %.2f: its boxes are not regressed", name, min_overlap)
            stats[name] = {"examples": 0}
            continue
        x, y = np.concatenate(xs[k]), np.concatenate(ys[k])
        mu, sigma = y.mean(axis=0), y.std(axis=0)
        sigma = np.where(sigma > 1e-6, sigma, 1.0)
        target = (y - mu) / sigma
        lam_k, curve = (float(lam), {}) if lam is not None else ridge_lambda_cv(x, target, np.concatenate(gs[k]))
        w, b = ridge_fit(x, target, lam_k)
        weights[k], bias[k], mean[k], std[k] = w, b, mu, sigma
        pred = ((x @ w + b) * sigma + mu)
        stats[name] = {"examples": int(len(x)), "target_mean": mu.tolist(), "target_std": sigma.tolist(),
                       "train_mse_before": float((y ** 2).mean()), "train_mse_after": float(((pred - y) ** 2).mean()),
                       "lambda": lam_k, "lambda_cv_mse": curve}
        logger.info("bbox %s: %d regions, lambda %g%s, target MSE %.4f -> %.4f", name, len(x), lam_k,
                    " (5-fold cross-validation over images)" if curve else "", stats[name]["train_mse_before"],
                    stats[name]["train_mse_after"])
    return BBoxRegressor(weights, bias, mean, std, scale, classes), stats


