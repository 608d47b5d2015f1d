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

__all__ = ["RUNTIMES", "available_runtimes", "resolve_runtime", "compile_network"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


def available_runtimes() -> list[str]:
    return ["torch"] + [r for r, m in _MODULES.items() if importlib.util.find_spec(m) is not None]


def resolve_runtime(name: str = "torch") -> str:
    """``auto`` -> ONNX Runtime when installed (the fastest on CPUs measured here), else torch;
    a runtime that is not installed is a one-line error."""
    if name == "auto":
        return "onnxruntime" if "onnxruntime" in available_runtimes() else "torch"
    if name not in RUNTIMES:
        raise UserError(f"--runtime {name}: choose torch, onnxruntime, openvino or auto")
    if name != "torch" and name not in available_runtimes():
        raise UserError(f"--runtime {name}: not installed (pip install 'rcnn-cli[{_EXTRAS[name]}]')")
    return name


def _key(parts: dict[str, Any]) -> str:
    text = json.dumps(dict(parts, torch=torch.__version__), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from rcnn_cli.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, torch.no_grad():
        kwargs = dict(input_names=["images"], output_names=["features"], dynamic_axes={"images": {0: "batch"},
                      "features": {0: "batch"}}, opset_version=17)
        try:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(model, (example,), str(tmp), **kwargs)


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
                    key: dict[str, Any], tolerance: float = 1e-3) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (eval mode, CPU) as ``f(images (B, 3, S, S) float32) -> (B, D) float32`` in
    ``runtime``; ``example`` is one batch of the input size (used to export and to check)."""
    runtime = resolve_runtime(runtime)
    model = model.eval()
    if runtime == "torch":
        model = model.to(memory_format=torch.channels_last)
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))
    path = Path(cache_dir) / f"{_key(key)}.onnx"
    threads = torch.get_num_threads()
    if not path.is_file():
        logger.info("exporting the network to ONNX for %s: %s", runtime, path)
        _export(model, example, path)
    try:
        run = _session(runtime, path, threads)
    except Exception as e:  # noqa: BLE001 - a damaged cache file: build it again
        logger.warning("%s: cached graph unreadable (%s); exporting it again", path, str(e).splitlines()[0])
        _export(model, example, path)
        run = _session(runtime, path, threads)
    with torch.no_grad():
        want = model(example).numpy()
    got = run(example.numpy())
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise UserError(f"--runtime {runtime}: its features differ from torch's by {diff:.2e} (> {tolerance:g}); "
                        "use --runtime torch")
    logger.info("%s graph %s checked against torch: largest difference %.1e", runtime, path.name, diff)
    return lambda x: torch.from_numpy(run(np.ascontiguousarray(x.numpy(), np.float32)))
