"""The R-CNN detector: the model directory (save, merge, load with checks) and detection of one image.

A model directory holds

* ``config.json``: ``format`` ("rcnn-model"), ``version``, ``rcnn_version``, ``backbone``,
  ``weights`` ("imagenet", "none" or the file name of fine-tuned weights inside the directory),
  ``weights_id``, ``layer``, ``warp_size``, ``padding``, ``feature_dim``, ``feature_scale``,
  ``classes``, ``proposals`` (method, mode, max_size, min_size, limit), ``svm`` / ``bbox``
  (training settings and statistics), ``detect`` (default score threshold, NMS, top-K), ``arrays``
  (file -> tensor name -> shape);
* ``svm.safetensors``: ``weight (K, D)``, ``bias (K,)``;
* ``bbox.safetensors``: ``weight (K, D, 4)``, ``bias (K, 4)``, ``target_mean (K, 4)``, ``target_std (K, 4)``;
* optionally ``backbone.safetensors``: fine-tuned feature-extractor weights.

Detection: proposals -> warped-region features -> SVM margins ``m`` -> score ``sigmoid(m)`` (a
monotone map, so rankings and AP are the SVM's; the default threshold 0.05 keeps margins above
about -2.94) -> class-specific box regression -> per-class NMS -> top-K.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


from rcnn_cli.rcnn.classifiers import BBoxConfig, BBoxRegressor, SVMConfig, SVMModel
from rcnn_cli.errors import UserError
from rcnn_cli.detector import DetectConfig, DetectSettings, Detector, settings_in_effect

#: The method's one name: its model directories' kind and its folder in ``rcnn compare``.
NAME = "rcnn"
MODEL_VERSION = 1
WEIGHTS_FILE = "backbone.safetensors"
SVM_FILE = "svm.safetensors"
BBOX_FILE = "bbox.safetensors"

DEFAULT_PROPOSALS = {"method": "selective-search", "mode": "fast", "max_size": 500, "min_size": 20, "limit": None}
DEFAULT_DETECT = DetectConfig().to_dict()
_D = DetectConfig()

_SVM_ARRAYS = ("weight", "bias")
_BBOX_ARRAYS = ("weight", "bias", "target_mean", "target_std")


# ------------------------------------------------------------------------------ saving / merging


def _read_config(model_dir: Path) -> dict[str, Any]:
    """The model configuration of an R-CNN model directory (``{}`` when it has none yet)."""
    from rcnn_cli.io.runs import read_run

    if not (model_dir / "config.json").exists():
        return {}
    run = read_run(model_dir)
    if run.kind != NAME:
        raise UserError(f"{model_dir / 'config.json'}: a '{run.kind}' run, not an R-CNN model directory")
    return dict(run.model)


def _write_config(model_dir: Path, cfg: dict[str, Any], command: str) -> None:
    from rcnn_cli.io.runs import write_run

    stages = {k: cfg[k] for k in ("svm", "bbox") if k in cfg}
    write_run(model_dir, NAME, cfg, stages, command)


_FEATURE_KEYS = ("backbone", "weights_id", "layer", "warp_size", "padding", "feature_dim")


def feature_config(attrs: dict[str, Any], feature_dim: int, weights: str | None = None) -> dict[str, Any]:
    """The model-config entries that describe the features, from a features store's attributes."""
    missing = [k for k in ("backbone", "weights_id", "layer", "warp_size", "padding") if k not in attrs]
    if missing:
        raise UserError(f"features store lacks the attributes {', '.join(missing)}")
    out = {
        "backbone": str(attrs["backbone"]),
        "weights_id": str(attrs["weights_id"]),
        "layer": str(attrs["layer"]),
        "warp_size": int(attrs["warp_size"]),
        "padding": int(attrs["padding"]),
        "feature_dim": int(feature_dim),
        "normalization": str(attrs.get("normalization", "")),
    }
    if weights is not None:
        out["weights"] = weights
    return out


def _merge_config(model_dir: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into ``model_dir/config.json``; refuse to mix features of other settings."""
    cfg = _read_config(model_dir)
    for key in _FEATURE_KEYS:
        if key in cfg and key in updates and cfg[key] != updates[key]:
            raise UserError(f"{model_dir}: the model was trained on features with {key}={cfg[key]!r}, these have "
                            f"{updates[key]!r}; use another --out or the same features settings")
    if "classes" in cfg and "classes" in updates and cfg["classes"] != updates["classes"]:
        raise UserError(f"{model_dir}: the model has classes {cfg['classes']}, these features have {updates['classes']}")
    arrays = dict(cfg.get("arrays", {}))
    arrays.update(updates.pop("arrays", {}))
    cfg.update(updates)
    cfg.update({"version": MODEL_VERSION, "arrays": arrays})
    cfg.setdefault("proposals", dict(DEFAULT_PROPOSALS))
    cfg.setdefault("detect", dict(DEFAULT_DETECT))
    cfg.setdefault("weights", "imagenet")
    return cfg


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[int]]:
    from rcnn_cli.io.tensors import save_tensors

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    save_tensors(path, tensors)
    return {k: list(v.shape) for k, v in tensors.items()}


def install_weights(model_dir: str | Path, weights: str | Path | None) -> str:
    """Copy fine-tuned backbone weights into the model directory; returns the config's ``weights``."""
    if weights is None or str(weights) in ("imagenet", "none"):
        return str(weights or "imagenet")
    src = Path(weights)
    if not src.is_file():
        raise UserError(f"--weights {src}: file not found")
    dst = Path(model_dir) / WEIGHTS_FILE
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        from rcnn_cli.io import atomic_path

        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return WEIGHTS_FILE


def save_svm(model_dir: str | Path, svm: SVMModel, features_cfg: dict[str, Any], settings: dict[str, Any],
             proposals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``svm.safetensors`` and merge the config (features settings, scale, classes, SVM settings)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    shapes = _save_arrays(model_dir / SVM_FILE, {"weight": svm.weights, "bias": svm.bias})
    updates = dict(features_cfg)
    updates.update({"classes": list(svm.classes), "feature_scale": float(svm.feature_scale), "svm": settings,
                    "arrays": {SVM_FILE: shapes}})
    if proposals:
        updates["proposals"] = proposals
    cfg = _merge_config(model_dir, updates)
    _write_config(model_dir, cfg, "rcnn train-svm")
    return cfg


def save_bbox(model_dir: str | Path, reg: BBoxRegressor, features_cfg: dict[str, Any], settings: dict[str, Any],
              proposals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``bbox.safetensors`` and merge the config."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    shapes = _save_arrays(model_dir / BBOX_FILE, {"weight": reg.weights, "bias": reg.bias,
                                                  "target_mean": reg.target_mean, "target_std": reg.target_std})
    updates = dict(features_cfg)
    settings = dict(settings, feature_scale=float(reg.feature_scale))
    updates.update({"classes": list(reg.classes), "bbox": settings, "arrays": {BBOX_FILE: shapes}})
    updates.setdefault("feature_scale", float(reg.feature_scale))
    if proposals:
        updates["proposals"] = proposals
    cfg = _read_config(model_dir)
    if "feature_scale" in cfg:
        updates.pop("feature_scale", None)  # keep the SVM's scale; the regressor records its own
    cfg = _merge_config(model_dir, updates)
    _write_config(model_dir, cfg, "rcnn train-bbox")
    return cfg


# ------------------------------------------------------------------------------------ loading


@dataclass
class RCNNModel:
    """A loaded model directory."""

    root: Path
    config: dict[str, Any]
    svm: SVMModel
    bbox: BBoxRegressor | None

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def weights(self) -> str:
        """The ``weights`` argument for the feature extractor ("imagenet", "none" or a file path)."""
        w = self.config.get("weights", "imagenet")
        return w if w in ("imagenet", "none") else str(self.root / w)


def _need(cfg: dict, key: str, types: type | tuple, where: Path) -> Any:
    if key not in cfg:
        raise UserError(f"{where}: config has no '{key}' (not a complete model: run train-svm into this directory)")
    value = cfg[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise UserError(f"{where}: config '{key}' has the wrong type ({type(value).__name__})")
    return value


def _load_arrays(path: Path, names: tuple[str, ...], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    from rcnn_cli.io.tensors import load_tensors

    arrays = {k: v.numpy() for k, v in load_tensors(path, "model array").items()}
    for name in names:
        if name not in arrays:
            raise UserError(f"{path}: missing array '{name}'")
        a = arrays[name]
        if tuple(a.shape) != shapes[name]:
            raise UserError(f"{path}: array '{name}' has shape {tuple(a.shape)}, the config implies {shapes[name]}")
        if not np.isfinite(a).all():
            raise UserError(f"{path}: array '{name}' has non-finite values")
    return {k: arrays[k].astype(np.float32) for k in names}


def load_model(model_dir: str | Path) -> RCNNModel:
    """Load and check a model directory; every problem is a one-line :class:`UserError`."""
    root = Path(model_dir)
    if not root.is_dir():
        raise UserError(f"{root}: model directory not found")
    where = root / "config.json"
    if not where.is_file():
        raise UserError(f"{where}: not found (not a model directory)")
    cfg = _read_config(root)
    version = cfg.get("version")
    if not isinstance(version, int) or version > MODEL_VERSION:
        raise UserError(f"{where}: model format version {version!r} is not supported (this rcnn reads <= {MODEL_VERSION})")
    classes = _need(cfg, "classes", list, where)
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise UserError(f"{where}: 'classes' must be a non-empty list of distinct names")
    for key in ("backbone", "weights_id", "layer"):
        _need(cfg, key, str, where)
    for key in ("warp_size", "padding", "feature_dim"):
        value = _need(cfg, key, int, where)
        if value < 0 or (key != "padding" and value == 0):
            raise UserError(f"{where}: '{key}' must be positive (got {value})")
    scale = _need(cfg, "feature_scale", (int, float), where)
    if not math.isfinite(scale) or scale <= 0:
        raise UserError(f"{where}: 'feature_scale' must be a positive number (got {scale})")
    from rcnn_cli.backbones import get_spec

    spec = get_spec(cfg["backbone"])
    if cfg["layer"] not in spec.layers:
        raise UserError(f"{where}: backbone {cfg['backbone']} has no layer '{cfg['layer']}'")
    weights = cfg.get("weights", "imagenet")
    if not isinstance(weights, str):
        raise UserError(f"{where}: 'weights' must be a string")
    if weights not in ("imagenet", "none"):
        wpath = root / weights
        if Path(weights).is_absolute() or ".." in Path(weights).parts or not wpath.is_file():
            raise UserError(f"{where}: weights file '{weights}' is missing from the model directory")
    props = cfg.get("proposals", DEFAULT_PROPOSALS)
    if not isinstance(props, dict):
        raise UserError(f"{where}: 'proposals' must be an object")
    k, d = len(classes), cfg["feature_dim"]
    sv = _load_arrays(root / SVM_FILE, _SVM_ARRAYS, {"weight": (k, d), "bias": (k,)})
    svm = SVMModel(sv["weight"], sv["bias"], float(scale), list(classes))
    bbox = None
    if (root / BBOX_FILE).exists() or BBOX_FILE in cfg.get("arrays", {}):
        b = _load_arrays(root / BBOX_FILE, _BBOX_ARRAYS, {"weight": (k, d, 4), "bias": (k, 4), "target_mean": (k, 4),
                                                          "target_std": (k, 4)})
        bscale = cfg.get("bbox", {}).get("feature_scale", scale)
        if not isinstance(bscale, (int, float)) or not math.isfinite(bscale) or bscale <= 0:
            raise UserError(f"{where}: 'bbox.feature_scale' must be a positive number")
        bbox = BBoxRegressor(b["weight"], b["bias"], b["target_mean"], b["target_std"], float(bscale), list(classes))
    return RCNNModel(root, cfg, svm, bbox)


# ----------------------------------------------------------------------------------- detection


def postprocess(model: RCNNModel, features: np.ndarray, boxes: np.ndarray, width: int | None, height: int | None,
                score_threshold: float = _D.score_threshold, nms: float = _D.nms, top_k: int = _D.top_k,
                use_bbox: bool = True,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVM scores, box regression, per-class NMS and top-K for one image's regions.

    ``features (N, D)`` raw, ``boxes (N, 4)`` pixels -> ``(boxes (M, 4), scores (M,), class index (M,) 0..K-1)``
    sorted by score.
    """
    from torchvision.ops import batched_nms, clip_boxes_to_image

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    margins = model.svm.scores(features)
    scores = 1.0 / (1.0 + np.exp(-margins.astype(np.float64)))  # (N, K)
    rows, cols = np.nonzero(scores > score_threshold)
    if len(rows) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    cand_boxes = boxes[rows]
    if use_bbox and model.bbox is not None:
        cand_boxes = model.bbox.predict(np.asarray(features, np.float32)[rows], cand_boxes, cols)
    tb = torch.from_numpy(np.ascontiguousarray(cand_boxes, np.float32))
    if width is not None and height is not None:
        tb = clip_boxes_to_image(tb, (int(height), int(width)))
    ts = torch.from_numpy(scores[rows, cols].astype(np.float32))
    tc = torch.from_numpy(cols.astype(np.int64))
    keep = batched_nms(tb, ts, tc, float(nms))[: int(top_k)]  # sorted by decreasing score
    return tb[keep].numpy(), ts[keep].numpy(), tc[keep].numpy()


class RCNNDetector(Detector):
    """An R-CNN model directory, ready to detect: ``detect(image, image_id) -> ImageDetections``.

    Regions come from ``proposals`` (a proposals store, when it has the image) or the model's own
    proposal method (selective search with the training settings, or the RPN of the Faster R-CNN
    run the training proposals came from). Features come from ``features`` (a features store made
    with the model's settings, when it has the image: R-CNN's cached ``rcnn_test``; its
    ground-truth rows are left out) or the feature extractor.
    """

    kind = NAME
    _own = None  # the proposals reader from_run opened (closed by close)

    def __init__(self, model: RCNNModel | str | Path, device: str = "auto", config: DetectSettings = None,
                 proposals: Any = None, features: Any = None, use_bbox: bool = True, batch_size: int = 64,
                 extractor: Any = None, runtime: str = "torch"):
        from rcnn_cli.memory import reuse_memory

        reuse_memory()  # the same large crops and activations on every call: keep them on the heap
        self.model = model if isinstance(model, RCNNModel) else load_model(model)
        cfg = self.model.config
        self.config = settings_in_effect(config, DetectConfig(**dict(DEFAULT_DETECT, **cfg.get("detect", {}))))
        self.use_bbox, self.device, self.batch_size, self.runtime = use_bbox, device, batch_size, runtime
        self._rpn = None  # the RPN of a model trained on RPN proposals, loaded on first use
        self.proposals, self.features = proposals, features
        if features is not None:
            _check_features(dict(features.attrs), cfg)
        self.proposal_settings = dict(DEFAULT_PROPOSALS, **cfg.get("proposals", {}))
        self._extractor = extractor

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto", config: DetectSettings = None,
                 proposals: Any = None, use_bbox: bool = True, batch_size: int = 64,
                 runtime: str = "torch") -> "RCNNDetector":
        """``proposals``: a proposals file (else the model's proposal method runs on the fly);
        ``runtime``: the region network's (torch, onnxruntime, openvino, auto)."""
        from rcnn_cli.proposals import load as load_proposals

        reader = load_proposals(proposals) if isinstance(proposals, (str, Path)) else proposals
        detector = cls(run_dir, device=device, config=config, proposals=reader, use_bbox=use_bbox,
                       batch_size=batch_size, runtime=runtime)
        detector._own = reader if reader is not proposals else None
        return detector

    def close(self) -> None:
        if self._own is not None:
            self._own.close()

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    @property
    def extractor(self):
        """The feature extractor with the model's settings (built on first use)."""
        if self._extractor is None:
            from rcnn_cli.rcnn.features import FeatureExtractor

            cfg = self.model.config
            self._extractor = FeatureExtractor(cfg["backbone"], weights=self.model.weights, layer=cfg["layer"],
                                               warp_size=cfg["warp_size"], padding=cfg["padding"],
                                               batch_size=self.batch_size, device=self.device, runtime=self.runtime,
                                               cache_dir=self.model.root / "graphs")
            got = self._extractor.config.get("weights_id")
            if got is not None and got != cfg["weights_id"]:
                raise UserError(f"{self.model.root}: weights {self.model.weights} give weights id {got}, the model "
                                f"was trained on {cfg['weights_id']}")
        return self._extractor

    def settings(self) -> dict[str, Any]:
        runtime = self._extractor.runtime if self._extractor is not None else self.runtime  # auto resolved once built
        return dict(super().settings(), use_bbox=self.use_bbox, proposals=self.proposal_settings, runtime=runtime)

    def propose(self, image, image_id: str) -> np.ndarray:
        """Proposals ``(N, 4)`` for one image: from the store when it has the image, else computed."""
        from rcnn_cli import proposals as P

        if self.proposals is not None and image_id in self.proposals:
            return np.asarray(P.boxes_for(self.proposals, image_id, image.size), np.float32)

        s = self.proposal_settings
        if s.get("method") == "rpn":
            return self._rpn_proposals(image)
        if s.get("method", "selective-search") != "selective-search":
            raise UserError(f"the model's proposals method '{s.get('method')}' cannot run on the fly; pass --proposals FILE")
        return np.asarray(P.selective_search(image, mode=s.get("mode", "fast"), max_size=int(s.get("max_size", 500)),
                                             min_size=int(s.get("min_size", 20)), limit=s.get("limit")), np.float32)

    def _rpn_proposals(self, image) -> np.ndarray:
        """The RPN of the Faster R-CNN run the training proposals came from, as many boxes as then."""
        s = self.proposal_settings
        if self._rpn is None:
            run = s.get("model")
            if not run:
                raise UserError("the model was trained on RPN proposals that do not name their Faster R-CNN run; "
                                "pass --proposals FILE")
            if not Path(run).is_dir():
                raise UserError(f"the model was trained on RPN proposals of '{run}', which is not here; "
                                "pass --proposals FILE or copy that Faster R-CNN run back")
            from rcnn_cli.models.faster_rcnn import rpn_proposer

            self._rpn = rpn_proposer(run, device=self.device, post_nms_top_n=int(s.get("post_nms_top_n") or 300))
        return self._rpn(image)

    def _regions(self, image, image_id: str) -> tuple[np.ndarray, np.ndarray, float]:
        """``(boxes (N, 4), features (N, D), proposal seconds)``: cached, or proposed and extracted."""
        if self.features is not None and image_id in self.features:
            item = self.features.get(image_id)
            keep = ~item["gt"].astype(bool) if "gt" in item else np.ones(len(item["boxes"]), bool)
            return (np.asarray(item["boxes"], np.float32)[keep], np.asarray(item["features"], np.float32)[keep],
                    0.0)
        t0 = time.perf_counter()
        boxes = self.propose(image, image_id)
        seconds = time.perf_counter() - t0
        dim = self.model.config["feature_dim"]
        return boxes, (self.extractor(image, boxes) if len(boxes) else np.zeros((0, dim), np.float32)), seconds

    def detect(self, image, image_id: str):
        from rcnn_cli.boxes import ImageDetections

        t0 = time.perf_counter()
        boxes, feats, t_prop = self._regions(image, image_id)
        t2 = time.perf_counter()
        width, height = image.size
        c = self.config
        b, s, k = postprocess(self.model, feats, boxes, width, height, c.score_threshold, c.nms, c.top_k,
                              self.use_bbox)
        return ImageDetections(image_id, b, s, [self.classes[i] for i in k], num_proposals=int(len(boxes)),
                               timings={"proposals": t_prop, "network": t2 - t0 - t_prop,
                                        "post": time.perf_counter() - t2})


def _check_features(attrs: dict[str, Any], cfg: dict[str, Any]) -> None:
    """A features store must have been extracted with the model's settings."""
    for key in ("backbone", "weights_id", "layer", "warp_size", "padding"):
        if key in attrs and str(attrs[key]) != str(cfg[key]):
            raise UserError(f"features store has {key}={attrs[key]!r}, the model was trained on {cfg[key]!r}")


# ------------------------------------------------------------------------------ training stages


def proposal_settings(attrs: dict[str, Any] | None) -> dict[str, Any]:
    """The proposal settings a model records (for on-the-fly selective search at detect time)."""
    attrs = dict(attrs or {})
    out = dict(DEFAULT_PROPOSALS)
    for key in out:
        for name in (key, f"proposals_{key}", key.replace("_", "-")):
            if name in attrs:
                value = attrs[name]
                out[key] = value.item() if hasattr(value, "item") else value
                break
    if out["limit"] is not None:
        out["limit"] = int(out["limit"]) if int(out["limit"]) > 0 else None
    out["max_size"], out["min_size"] = int(out["max_size"]), int(out["min_size"])
    out["method"], out["mode"] = str(out["method"]), str(out["mode"])
    if out["method"] == "rpn":  # the Faster R-CNN run that proposes at detect time (rpn_attrs)
        out["model"] = str(attrs.get("model", ""))
        out["post_nms_top_n"] = int(attrs.get("post_nms_top_n", 300))
    return out


def _features_context(features: str | Path, proposals: str | Path | None, weights: str | Path | None,
                      model_dir: Path) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """Open the features store; the model-config features entries; the proposal settings."""
    from rcnn_cli.backbones import weights_id
    from rcnn_cli.rcnn.features import load_features

    reader = load_features(features)
    attrs = dict(reader.attrs)
    ids = reader.ids()
    if not ids:
        reader.close()
        raise UserError(f"{features}: no complete images in the features store")
    dim = int(np.asarray(reader.get(ids[0])["features"]).shape[1])
    wid = str(attrs.get("weights_id", ""))
    if weights is None:
        w = attrs.get("weights")
        if isinstance(w, str) and w not in ("imagenet", "none") and Path(w).is_file() and weights_id(attrs["backbone"], w) == wid:
            weights = w  # the store recorded the fine-tuned file it was made with
        elif wid.startswith("file:"):
            existing = _read_config(model_dir).get("weights")
            if not (existing and existing not in ("imagenet", "none") and (model_dir / existing).is_file()):
                reader.close()
                raise UserError(f"{features} was extracted with fine-tuned weights ({wid}): pass --weights PATH (the "
                                "finetune output's model.safetensors) so that the model can compute features")
            weights = model_dir / existing
        else:
            weights = "none" if wid.endswith(":none-seed0") else "imagenet"
    if str(weights) not in ("imagenet", "none") and weights_id(attrs["backbone"], weights) != wid:
        reader.close()
        raise UserError(f"--weights {weights} has weights id {weights_id(attrs['backbone'], weights)}, the features "
                        f"were extracted with {wid}")
    cfg = feature_config(attrs, dim, install_weights(model_dir, weights))
    props = None
    if proposals is not None:
        from rcnn_cli.proposals import load as load_proposals

        with load_proposals(proposals) as p:
            props = proposal_settings(p.attrs)
    elif isinstance(attrs.get("proposals"), dict) and attrs["proposals"].get("method"):
        props = proposal_settings(attrs["proposals"])  # recorded by extract-features
    return reader, cfg, props


def train_svm_model(features: str | Path, out: str | Path, config: SVMConfig | None = None,
                    proposals: str | Path | None = None, weights: str | Path | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """``rcnn train-svm``: train the SVMs on a features store into the model directory ``out``.

    Returns the merged model config. ``proposals`` (the proposals file the features came from)
    records the selective-search settings that ``detect`` reuses; ``weights`` names fine-tuned
    backbone weights when the features were extracted with them (copied into ``out``).
    """
    from dataclasses import asdict

    from rcnn_cli.rcnn.classifiers import train_svms

    config = config or SVMConfig()
    out = Path(out)
    reader, fcfg, props = _features_context(features, proposals, weights, out)
    try:
        svm, stats = train_svms(reader, **asdict(config), progress=progress)
        settings = {**asdict(config), "loss": "hinge (liblinear -s 3)", "features": str(features),
                    "feature_images": len(reader.ids()), "stats": stats}
        return save_svm(out, svm, dict(fcfg, classes=list(svm.classes)), settings, props)
    finally:
        reader.close()


def train_bbox_model(features: str | Path, out: str | Path, config: BBoxConfig | None = None,
                     proposals: str | Path | None = None, weights: str | Path | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """``rcnn train-bbox``: fit the box regressors into the model directory ``out`` (merging its config).

    Uses the model's feature scale when the SVMs are already there, else computes it.
    """
    from rcnn_cli.rcnn.classifiers import train_bbox_regressors

    config = config or BBoxConfig()
    lam, min_overlap = config.lam, config.min_overlap
    out = Path(out)
    reader, fcfg, props = _features_context(features, proposals, weights, out)
    try:
        scale = _read_config(out).get("feature_scale")
        reg, stats = train_bbox_regressors(reader, lam=lam, min_overlap=min_overlap, feature_scale=scale,
                                           progress=progress)
        chosen = {"cross-validated": {c: s.get("lambda") for c, s in stats.items()}}
        settings = {"lambda": lam if lam is not None else chosen, "min_overlap": min_overlap,
                    "coding": "boxes.encode weights (1, 1, 1, 1)", "features": str(features), "stats": stats}
        return save_bbox(out, reg, dict(fcfg, classes=list(reg.classes)), settings, props)
    finally:
        reader.close()
