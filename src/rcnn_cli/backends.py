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

__all__ = ["RUNTIMES", "available_runtimes", "resolve_runtime", "compile_network", "RuntimeTrunk", "export_onnx",
           "trunk_export", "normalization"]

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


def export_onnx(model: nn.Module, example: torch.Tensor | tuple, path: Path, dynamic: dict | None = None,
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
        export_onnx(model, example, path, dynamic)
    try:
        run = _session(runtime, path, threads)
    except Exception as e:  # noqa: BLE001 - a damaged cache file: build it again
        logger.warning("%s: cached graph unreadable (%s); exporting it again", path, str(e).splitlines()[0])
        export_onnx(model, example, path, dynamic)
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


def trunk_export(trunk: nn.Module, backbone: str, title: str) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """``(trunk, example input, description)`` for ``rcnn export`` of a stride-16 trunk (Fast and Faster
    R-CNN's: an image of any size -> its feature map)."""
    norm = normalization(backbone)
    return trunk.eval(), torch.rand(1, 3, 224, 288), {
        "what": f"the {title} trunk (stride 16)", "normalization": norm,
        "inputs": [{"name": "images", "shape": [1, 3, "height", "width"], "dtype": "float32"}],
        "outputs": [{"name": "features", "shape": [1, int(getattr(trunk, "out_channels", 0)), "height/16",
                                                    "width/16"], "dtype": "float32"}],
        "caller": "resize the image (shorter side min_size, longer at most max_size of the run's config.json), "
                  "normalise, run this; the RPN, RoI pooling, the box head and NMS stay in torch/torchvision "
                  "(rcnn_cli.models): this export is the trunk only"}


def normalization(backbone: str) -> dict[str, Any]:
    """A backbone's input normalisation, as an export's description states it."""
    from rcnn_cli.backbones import get_spec

    spec = get_spec(backbone)
    return {"mean": list(spec.mean), "std": list(spec.std), "input": "RGB in [0, 1], then (x - mean) / std"}
