"""Inference runtimes for the CNN: PyTorch eager (channels_last), ONNX Runtime, OpenVINO.

:func:`compile_network` turns a module that maps ``(B, 3, S, S)`` float32 images to ``(B, D)``
features into a callable of the chosen runtime. The ONNX graph (dynamic batch) is exported once and
cached under ``cache_dir`` by a key of everything that changes it (the weights id, the layer, the
input size, the versions); on load it is checked against torch on one batch (largest difference
<= ``tolerance``, else a one-line error naming it). A corrupt cached graph is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rcnn_cli.errors import UserError
from rcnn_cli.log import logger

__all__ = ["RUNTIMES", "available_runtimes", "resolve_runtime", "compile_network", "RuntimeTrunk", "export_run"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (a module hidden as ``sys.modules[name] = None`` cannot)."""
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(runtime: str) -> list[str]:
    """The packages ``runtime`` needs and lacks: itself, and ``onnx`` (torch's exporter writes the graph with it)."""
    return [m for m in (_MODULES[runtime], "onnx") if not _importable(m)]


def available_runtimes() -> list[str]:
    """The runtimes that can run here: torch, and each other one whose packages (exporter included) import."""
    return ["torch"] + [r for r in _MODULES if not _missing(r)]


def resolve_runtime(name: str = "torch", device_type: str = "cpu", exportable: bool = True) -> str:
    """``auto`` -> OpenVINO, else ONNX Runtime, else torch, whichever is installed first (the
    fastest first, as measured by scripts/bench_runtime.py), and torch on a GPU or for a network
    that does not export (``exportable`` False: HOG, feature pyramids); a runtime not installed is
    one line."""
    if name == "auto":
        if device_type != "cpu" or not exportable:
            return "torch"
        for runtime in ("openvino", "onnxruntime"):
            missing = _missing(runtime)
            if not missing:
                return runtime
            if _importable(_MODULES[runtime]):  # installed, but it cannot run without the rest
                logger.info("--runtime auto: %s is installed but %s is not (pip install 'rcnn-cli[%s]'); trying "
                            "the next runtime", runtime, ", ".join(missing), _EXTRAS[runtime])
        return "torch"
    if name not in RUNTIMES:
        raise UserError(f"--runtime {name}: choose torch, onnxruntime, openvino or auto")
    if name != "torch" and _missing(name):
        raise UserError(f"--runtime {name}: needs {', '.join(_missing(name))}, not installed "
                        f"(pip install 'rcnn-cli[{_EXTRAS[name]}]')")
    return name


def _key(parts: dict[str, Any]) -> str:
    text = json.dumps(dict(parts, torch=torch.__version__), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _export(model: nn.Module, example: torch.Tensor | tuple, path: Path, dynamic: dict | None = None,
            output: str | list[str] = "features", inputs: list[str] | None = None) -> None:
    """``model`` traced on ``example`` (a tensor, or a tuple of them) into the ONNX file ``path``,
    written atomically; ``inputs``/``output``: the graph's names, ``dynamic`` its dynamic axes."""
    from rcnn_cli.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = dynamic or {"images": {0: "batch"}, "features": {0: "batch"}}
    example = example if isinstance(example, tuple) else (example,)
    with atomic_path(path) as tmp, torch.no_grad():
        kwargs = dict(input_names=inputs or ["images"], output_names=[output] if isinstance(output, str) else output,
                      dynamic_axes=dynamic, opset_version=17)
        try:
            torch.onnx.export(model, example, str(tmp), dynamo=False, **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(model, example, str(tmp), **kwargs)


def _session(runtime: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": "f32"})  # not bf16
    return lambda x: compiled(x)[0]


def compile_network(model: nn.Module, runtime: str, example: torch.Tensor, cache_dir: str | Path,
                    key: dict[str, Any], tolerance: float = 1e-3,
                    dynamic: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (eval mode, CPU) as ``f(x float32) -> y float32`` in ``runtime``; ``example`` is one
    input (used to export and to check); ``dynamic``: the ONNX dynamic axes (default: the batch)."""
    runtime = resolve_runtime(runtime)
    model = model.eval()
    if runtime == "torch":
        model = model.to(memory_format=torch.channels_last)
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))
    path = Path(cache_dir) / f"{_key(dict(key, dynamic=dynamic))}.onnx"
    threads = torch.get_num_threads()
    if not path.is_file():
        logger.info("exporting the network to ONNX for %s: %s", runtime, path)
        _export(model, example, path, dynamic)
    try:
        run = _session(runtime, path, threads)
    except Exception as e:  # noqa: BLE001 - a damaged cache file: build it again
        logger.warning("%s: cached graph unreadable (%s); exporting it again", path, str(e).splitlines()[0])
        _export(model, example, path, dynamic)
        run = _session(runtime, path, threads)
    with torch.no_grad():
        want = model(example).numpy()
    got = run(example.numpy())
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise UserError(f"--runtime {runtime}: its outputs differ from torch's by {diff:.2e} (> {tolerance:g}); "
                        "use --runtime torch")
    logger.info("%s graph %s checked against torch: largest difference %.1e", runtime, path.name, diff)
    return lambda x: torch.from_numpy(run(np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)))


class RuntimeTrunk(nn.Module):
    """A detector's trunk run by :func:`compile_network` (images of any size -> feature maps)."""

    def __init__(self, trunk: nn.Module, runtime: str, cache_dir: str | Path, key: dict[str, Any]) -> None:
        super().__init__()
        self.out_channels = getattr(trunk, "out_channels", None)
        example = torch.rand(1, 3, 224, 288, generator=torch.Generator().manual_seed(0))
        self.run = compile_network(trunk, runtime, example, cache_dir, key,
                                   dynamic={"images": {2: "height", 3: "width"}})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.run(x[i:i + 1]) for i in range(len(x))]).to(x.device)


def export_run(run_dir: str | Path, fmt: str, out: str | Path, part: str | None = None) -> dict[str, Any]:
    """``rcnn export``: the CNN of a run for deployment, as ONNX (``.onnx``) or OpenVINO IR (``.xml``
    + ``.bin``), with ``<out>.json`` saying what it is, its inputs and outputs and what the caller
    does around it. Faster R-CNN: the whole detector (``part`` ``detector``, the default: an image
    in, boxes, scores and labels out; ``rcnn detect --model OUT.onnx`` runs it) or its ``trunk``;
    Fast R-CNN: the trunk (an image of any size -> its stride-16 feature map; the default) or, with
    ``part="detector"``, the whole detector with the proposals as a second input; R-CNN: the region
    network (warped crops -> features); YOLO: the whole network."""
    from rcnn_cli.io import write_json
    from rcnn_cli.io.runs import read_run

    run, out = read_run(run_dir), Path(out)
    if fmt not in ("onnx", "openvino"):
        raise UserError(f"--format {fmt}: choose onnx or openvino")
    if part not in (None, "detector", "trunk"):
        raise UserError(f"--part {part}: choose detector or trunk")
    if (run.kind == "faster" and part != "trunk") or (run.kind == "fast" and part == "detector"):
        return _export_whole(run, fmt, out)
    if part == "detector":
        raise UserError(f"--part detector: whole-detector export is for Fast and Faster R-CNN runs (this is a "
                        f"'{run.kind}' run)")
    model, example, info = _exportable(run)
    onnx_path = out if fmt == "onnx" else out.with_suffix(".onnx")
    batched = run.kind in ("rcnn", "yolo")  # fixed-size inputs, any batch; trunks: any image size
    dynamic = {"images": {0: "batch"}} if batched else {"images": {2: "height", 3: "width"}}
    output = info["outputs"][0]["name"]
    _export(model, example, onnx_path, dynamic=dict(dynamic, **{output: {0: "batch"} if batched else {}}), output=output)
    if fmt == "openvino":
        import openvino as ov

        resolve_runtime("openvino")
        ov.save_model(ov.convert_model(str(onnx_path)), str(out.with_suffix(".xml")))
        onnx_path.unlink()
    info.update(format=fmt, file=str(out.with_suffix(".xml") if fmt == "openvino" else out), run=str(run.root),
                kind=run.kind)
    write_json(Path(str(out) + ".json"), info)
    return info


class _WholeDetector(nn.Module):
    """A detector on one image: ``(3, H, W)`` in ``[0, 1]`` (and, for Fast R-CNN, ``(P, 4)`` proposals
    in the image's pixels) -> boxes, scores, labels."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, image: torch.Tensor, proposals: torch.Tensor | None = None):
        out = self.model([image])[0] if self.kind == "faster" else self.model([image], proposals=[proposals])[0]
        return out["boxes"], out["scores"], out["labels"]


def _whole(run) -> tuple[nn.Module, tuple, dict[str, Any], Any]:
    """``(wrapper, example inputs, the run's test-time settings with the normalisation, model
    config)`` of a Fast or Faster R-CNN run; no score threshold inside the graph (the caller applies it)."""
    if run.kind == "faster":
        from rcnn_cli.models.faster_rcnn import load_model

        model, cfg = load_model(run.root, "cpu")
        heads = model.roi_heads
        detect = {"score_threshold": float(heads.score_thresh), "nms": float(heads.nms_thresh),
                  "top_k": int(heads.detections_per_img)}
        heads.score_thresh = 0.0
        example = (torch.rand(3, int(cfg.min_size), int(cfg.min_size) * 4 // 3),)
    else:
        from rcnn_cli.models.fast_rcnn import load_fast_rcnn

        model = load_fast_rcnn(run.root)
        cfg = model.config
        detect = {"score_threshold": float(cfg.score_thresh), "nms": float(cfg.nms_thresh),
                  "top_k": int(cfg.detections_per_img)}
        cfg.score_thresh = 0.0
        side = int(cfg.min_size)
        corner = torch.rand(64, 2) * side / 2
        example = (torch.rand(3, side, side * 4 // 3), torch.cat([corner, corner + side / 4], 1))
    norm = {"mean": list(model.transform.image_mean), "std": list(model.transform.image_std)}
    return _WholeDetector(model.eval(), run.kind).eval(), example, dict(detect, **norm), cfg


def _export_whole(run, fmt: str, out: Path) -> dict[str, Any]:
    """A Fast or Faster R-CNN run as one graph (an image, and Fast R-CNN's proposals, in; boxes,
    scores, labels out), its description in ``<out>.json``."""
    from rcnn_cli.io import write_json

    whole, example, detect, cfg = _whole(run)
    mean, std = detect.pop("mean"), detect.pop("std")
    inputs = ["image"] + (["proposals"] if run.kind == "fast" else [])
    onnx_path = out if fmt == "onnx" else out.with_suffix(".onnx")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"},
               **({"proposals": {0: "p"}} if run.kind == "fast" else {})}
    _export(whole, example, onnx_path, dynamic, output=["boxes", "scores", "labels"], inputs=inputs)
    file = onnx_path
    if fmt == "openvino":
        import openvino as ov

        resolve_runtime("openvino")
        file = out.with_suffix(".xml")
        ov.save_model(ov.convert_model(str(onnx_path)), str(file))
        onnx_path.unlink()
    described = [{"name": "image", "shape": [3, "height", "width"], "dtype": "float32", "meaning": "RGB in [0, 1], any size"}]
    if run.kind == "fast":
        described.append({"name": "proposals", "shape": ["p", 4], "dtype": "float32",
                          "meaning": "region proposals, x1, y1, x2, y2 in the image's pixels (rcnn propose)"})
    info = {
        "what": f"the whole {'Faster' if run.kind == 'faster' else 'Fast'} R-CNN detector", "part": "detector",
        "kind": run.kind, "format": fmt, "file": str(file), "run": str(run.root), "classes": list(cfg.classes),
        "min_size": int(cfg.min_size), "max_size": int(cfg.max_size), "detect": detect,
        **({"proposals": dict(cfg.proposals or {}), "max_proposals": int(cfg.max_proposals)} if run.kind == "fast" else {}),
        "normalization": {"mean": mean, "std": std, "where": "inside the graph, with the resize"},
        "inputs": described,
        "outputs": [{"name": "boxes", "shape": ["n", 4], "dtype": "float32", "meaning": "x1, y1, x2, y2 in the "
                     "input's pixels"}, {"name": "scores", "shape": ["n"], "dtype": "float32"},
                    {"name": "labels", "shape": ["n"], "dtype": "int64", "meaning": "1..K: classes[label - 1]"}],
        "caller": f"keep the boxes scoring at least detect.score_threshold ({detect['score_threshold']:g}); NMS "
                  f"at IoU {detect['nms']:g} and at most {detect['top_k']} boxes are inside the graph; a photo larger "
                  "than max_size can be shrunk first and its boxes scaled back (rcnn detect --model OUT.onnx does)"}
    write_json(Path(str(out) + ".json"), info)
    return info


class _WholeYOLO(nn.Module):
    """A YOLO v1 network from normalised ``(N, 3, S, S)`` squares to its ``(N, S', S', 5B + C)`` output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.trunk(x))


def _yolo_exportable(run, norm: dict) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    from rcnn_cli.models.yolo import load_model

    model, cfg = load_model(run.root)
    s, depth = cfg.input_size, cfg.depth
    return _WholeYOLO(model).eval(), torch.rand(1, 3, s, s), {
        "what": "the whole YOLO v1 network (trunk and head)", "normalization": norm,
        "inputs": [{"name": "images", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        "outputs": [{"name": "grid", "shape": ["batch", cfg.grid, cfg.grid, depth], "dtype": "float32",
                     "meaning": "per cell: B x (x, y, sqrt w, sqrt h, confidence), then the class probabilities"}],
        "caller": f"resize the image to {s}x{s}, normalise, run this; per cell the first {5 * cfg.boxes_per_cell} "
                  f"numbers are {cfg.boxes_per_cell} x (x, y, sqrt w, sqrt h, confidence) and the rest the class "
                  "probabilities: decode with rcnn_cli.models.yolo.decode_output, then threshold, per-class NMS"}


def _exportable(run) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """``(module, example input, description)`` of a run's CNN."""
    from rcnn_cli.backbones import get_spec

    spec = get_spec(run.model["backbone"])
    norm = {"mean": list(spec.mean), "std": list(spec.std), "input": "RGB in [0, 1], then (x - mean) / std"}
    if run.kind == "rcnn":
        from rcnn_cli.rcnn.model import load_model

        m = load_model(run.root)
        from rcnn_cli.backbones import build_feature_extractor

        net, s = build_feature_extractor(m.config["backbone"], m.weights, m.config["layer"]).eval(), m.config["warp_size"]
        return net, torch.rand(2, 3, s, s), {
            "what": "the R-CNN region network", "normalization": norm,
            "inputs": [{"name": "images", "shape": ["batch", 3, s, s], "dtype": "float32"}],
            "outputs": [{"name": "features", "shape": ["batch", int(m.config["feature_dim"])], "dtype": "float32"}],
            "caller": f"propose regions, warp each to {s}x{s} with {m.config['padding']} px of context "
                      "(rcnn_cli.rcnn.features.warp_regions), normalise, run this, then score the features with "
                      "svm.safetensors (sigmoid of w.x + b after the model's feature_scale), box regression, NMS"}
    if run.kind == "faster":
        from rcnn_cli.models.faster_rcnn import load_model

        trunk = load_model(run.root)[0].backbone.body
    elif run.kind == "fast":
        from rcnn_cli.models.fast_rcnn import load_fast_rcnn

        trunk = load_fast_rcnn(run.root).trunk
    elif run.kind == "yolo":
        return _yolo_exportable(run, norm)
    else:
        raise UserError(f"{run.root}: a '{run.kind}' run has no detector network to export")
    return trunk.eval(), torch.rand(1, 3, 224, 288), {
        "what": f"the {run.kind} R-CNN trunk (stride 16)", "normalization": norm,
        "inputs": [{"name": "images", "shape": [1, 3, "height", "width"], "dtype": "float32"}],
        "outputs": [{"name": "features", "shape": [1, int(getattr(trunk, "out_channels", 0)), "height/16",
                                                    "width/16"], "dtype": "float32"}],
        "caller": "resize the image (shorter side min_size, longer at most max_size of the run's config.json), "
                  "normalise, run this; the RPN, RoI pooling, the box head and NMS stay in torch/torchvision "
                  "(rcnn_cli.models): this export is the trunk only"}
