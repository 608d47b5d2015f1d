"""CLI command: ``rcnn detect`` for every kind of run (and its aliases ``rcnn fast detect``,
``rcnn faster detect``); library: :func:`rcnn_cli.inference.detect`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli import options as O
from rcnn_cli.cli.app import app
from rcnn_cli.log import console


def detect_cmd(
    inputs: List[str] = typer.Argument(..., help="Images, folders, globs, list files, '-' (stdin), a dataset (with --split) or one video."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Any run directory (an R-CNN model, a Fast or "
                                        "Faster R-CNN, YOLO, localizer or Overfeat run), an exported whole-detector "
                                        ".onnx, or coco / coco-mobilenet (torchvision's COCO Faster R-CNN, cached or "
                                        "downloaded once; the default)."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split when INPUT is a VOC dataset."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder when INPUT is a COCO JSON."),
    score_threshold: Optional[float] = O.score_threshold(),
    nms: Optional[float] = O.nms(),
    top_k: Optional[int] = O.top_k(),
    proposals: Optional[Path] = typer.Option(None, "--proposals", "-p", help="R-CNN, Fast R-CNN: precomputed proposals (else the model's own method runs on the fly)."),
    max_proposals: Optional[int] = typer.Option(None, "--max-proposals", help="Fast R-CNN: top-ranked proposals used per image (default: as trained)."),
    rpn_top_n: Optional[int] = typer.Option(None, "--rpn-top-n", help="Faster R-CNN: RPN proposals per image (default: the run's, 300)."),
    no_bbox: bool = typer.Option(False, "--no-bbox", help="R-CNN: skip box regression."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="R-CNN: regions per network batch (default 64)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="The CNN's runtime (R-CNN: the region network; Fast/Faster R-CNN: the trunk): auto (default: OpenVINO, else ONNX Runtime, else torch; torch on a GPU), torch, onnxruntime or openvino."),
    merge: Optional[str] = typer.Option(None, "--merge", help="Overfeat: greedy (the paper's merge, default) or nms."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fast/Faster R-CNN: final (default) or best (the best validation epoch's, kept with --val-split)."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (streamed), coco (results JSON), voc (comp4 files in a "
                            "folder) or yolo (a 'class cx cy w h conf' file per image in a folder)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Keep only these classes' detections, e.g. "
                                          "person,dog."),
    agnostic_nms: Optional[float] = typer.Option(None, "--agnostic-nms", help="Also suppress overlapping boxes of "
                                                 "different classes at this IoU, e.g. 0.5 (default: per class only)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file/folder (jsonl: stdout when omitted)."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Also draw the boxes: into this folder (one image each), or a video file (.mp4) for a video input."),
    draw_threshold: float = typer.Option(0.3, "--draw-threshold", help="Drawn boxes score at least this (the "
                                         "detections written keep --score-threshold's, for AP)."),
    every: int = typer.Option(1, "--every", help="Video input: detect in every N-th frame."),
    tta: Optional[str] = typer.Option(None, "--tta", help="flip: also detect in the mirror image and merge the two by "
                                      "NMS with box voting (twice the network time; see docs/quality.md)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only every N-th image from the K-th (one machine of N); concatenate the outputs."),
    device: str = O.device(),
    progress: bool = O.progress(),
) -> None:
    """Detect objects with any trained run: streams one JSON line per image as soon as it is done."""
    from rcnn_cli.cli.data import parse_classes
    from rcnn_cli.workflows.detect import detect

    if model is None:
        console.print("no --model: torchvision's COCO Faster R-CNN (80 classes; --model RUN for your own)",
                      highlight=False)
        model = "coco"
    given = {"proposals": proposals, "max_proposals": max_proposals, "rpn_top_n": rpn_top_n,
             "use_bbox": False if no_bbox else None, "batch_size": batch_size, "weights": weights, "runtime": runtime,
             "merge": merge}
    result = detect(inputs, model, split=split, images=images, config=O.detect_config(score_threshold, nms, top_k),
                    fmt=fmt, out=out, draw=draw, device=device, progress=progress, every=every, shard=shard,
                    keep_classes=parse_classes(classes), agnostic_nms=agnostic_nms, draw_threshold=draw_threshold,
                    tta=tta, **{k: v for k, v in given.items() if v is not None})
    timings = result.get("timings", {})
    per_stage = ", ".join(f"{k} {v['median'] * 1000:.1f} ms" for k, v in timings.items()
                          if k in ("proposals", "network", "post", "total"))
    console.print(f"{result.get('images', 0)} images ({result.get('skipped', 0)} skipped), "
                  f"{result.get('detections', 0)} detections; median per image: {per_stage}", highlight=False)


app.command("detect")(detect_cmd)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A run directory: an R-CNN model, a Fast, Faster R-CNN or YOLO run."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (.onnx) or openvino (.xml + .bin)."),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write; <out>.json describes it."),
    part: Optional[str] = typer.Option(None, "--part", help="Fast/Faster R-CNN: detector (image, and Fast R-CNN's "
                                       "proposals, in; boxes, scores, labels out; Faster's default) or trunk (the "
                                       "feature map; Fast's default)."),
) -> None:
    """Export a run's CNN for deployment (Faster R-CNN: the whole detector, `rcnn detect --model OUT.onnx` runs it;
    R-CNN: the region network; Fast R-CNN: the trunk; YOLO: the whole network)."""
    from rcnn_cli.workflows.export import export_run

    info = export_run(run, fmt, out, part)
    console.print(f"{info['file']}: {info['what']} ({info['format']}); inputs, outputs and what the caller "
                  f"does around it: {out}.json", highlight=False)
