"""``rcnn export``: a run's network for deployment, as ONNX (``.onnx``) or OpenVINO IR (``.xml`` + ``.bin``),
with ``<out>.json`` saying what it is, its inputs and outputs and what the caller does around it.

What is exported is the method's business (:class:`rcnn_cli.method.Export`): Faster R-CNN the whole
detector by default (an image in; boxes, scores and labels out; ``rcnn detect --model OUT.onnx``
runs it) or its ``trunk``; Fast R-CNN its trunk by default or, with ``part="detector"``, the whole
detector with the proposals as a second input; R-CNN the region network; YOLO the whole network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rcnn_cli.backends import export_onnx, resolve_runtime
from rcnn_cli.errors import UserError
from rcnn_cli.io.files import write_json
from rcnn_cli.io.runs import read_run
from rcnn_cli.registry import METHODS, method

__all__ = ["export_run", "export_backbone", "network"]


def _to_openvino(onnx_path: Path, out: Path) -> Path:
    """The ONNX graph converted to OpenVINO IR beside ``out`` (``.xml`` + ``.bin``); the ONNX file removed."""
    import openvino as ov

    resolve_runtime("openvino")
    xml = out.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    onnx_path.unlink()
    return xml


def export_run(run_dir: str | Path, fmt: str, out: str | Path, part: str | None = None) -> dict[str, Any]:
    """Export the network of ``run_dir`` (``part``: ``detector``, ``trunk`` or ``None`` for the method's
    default) to ``out``; returns the description written to ``<out>.json``."""
    run, out = read_run(run_dir), Path(out)
    if fmt not in ("onnx", "openvino"):
        raise UserError(f"--format {fmt}: choose onnx or openvino")
    if part not in (None, "detector", "trunk"):
        raise UserError(f"--part {part}: choose detector or trunk")
    m = method(run.kind)
    how = m.export
    if how is None or how.network is None and how.whole is None:
        raise UserError(f"{run.root}: a '{run.kind}' run has no detector network to export")
    if how.whole is not None and (part == "detector" or (part is None and how.whole_by_default)):
        return _export_whole(run, m, fmt, out)
    if part == "detector":
        raise UserError(f"--part detector: whole-detector export is for Fast and Faster R-CNN runs (this is a "
                        f"'{run.kind}' run)")
    model, example, info = how.network(run)
    onnx_path = out if fmt == "onnx" else out.with_suffix(".onnx")
    dynamic = {"images": {0: "batch"}} if how.batched else {"images": {2: "height", 3: "width"}}
    output = info["outputs"][0]["name"]
    export_onnx(model, example, onnx_path, dynamic=dict(dynamic, **{output: {0: "batch"} if how.batched else {}}),
                output=output)
    file = _to_openvino(onnx_path, out) if fmt == "openvino" else out
    info.update(format=fmt, file=str(file), run=str(run.root), kind=run.kind)
    write_json(Path(str(out) + ".json"), info)
    return info


def _export_whole(run, m, fmt: str, out: Path) -> dict[str, Any]:
    """A run's whole detector as one graph (an image, and for Fast R-CNN its proposals, in; boxes,
    scores, labels out), its description in ``<out>.json``."""
    whole, example, detect, cfg, extra = m.export.whole(run)
    mean, std = detect.pop("mean"), detect.pop("std")
    inputs = list(m.export.whole_inputs)
    onnx_path = out if fmt == "onnx" else out.with_suffix(".onnx")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"},
               **{name: {0: "p"} for name in inputs[1:]}}
    export_onnx(whole, example, onnx_path, dynamic, output=["boxes", "scores", "labels"], inputs=inputs)
    file = _to_openvino(onnx_path, out) if fmt == "openvino" else onnx_path
    described = [{"name": "image", "shape": [3, "height", "width"], "dtype": "float32",
                  "meaning": "RGB in [0, 1], any size"}, *extra.pop("inputs", [])]
    info = {
        "what": f"the whole {m.title} detector", "part": "detector",
        "kind": run.kind, "format": fmt, "file": str(file), "run": str(run.root), "classes": list(cfg.classes),
        "min_size": int(cfg.min_size), "max_size": int(cfg.max_size), "detect": detect, **extra,
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


def export_backbone(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """``rcnn export-backbone``: the trained trunk (and head) of a detector run as R-CNN ``--weights``
    (:func:`rcnn_cli.rcnn.finetune.export_backbone`); a run whose method trains no backbone is one line."""
    from rcnn_cli.rcnn import finetune

    run = read_run(run_dir)
    m = method(run.kind)
    if m.backbone is None:
        takers = ", ".join(f"'{k}'" for k, v in METHODS.items() if v.backbone is not None)
        raise UserError(f"{run_dir}: a '{run.kind}' run has no trained backbone to export ({takers} runs have)")
    return finetune.export_backbone(run_dir, out, m.backbone)


def network(run_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(module, example input, description)`` of what ``rcnn export`` writes for a run's network."""
    run = read_run(run_dir)
    how = method(run.kind).export
    if how is None or how.network is None:
        raise UserError(f"{run.root}: a '{run.kind}' run has no detector network to export")
    return how.network(run)
