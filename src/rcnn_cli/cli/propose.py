"""CLI commands: ``rcnn propose`` and ``rcnn proposals recall`` (library: :mod:`rcnn_cli.proposals`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcnn_cli.cli.app import app, group
from rcnn_cli.errors import UserError
from rcnn_cli.log import console

proposals_app = group("proposals")


@app.command("propose")
def propose_cmd(
    inputs: List[str] = typer.Argument(..., help="Images, folders, globs, list files, '-' (paths on stdin), or a dataset (VOC root with --split, COCO JSON with --images)."),
    out: Path = typer.Option(..., "--out", "-o", help="Proposals HDF5 file (resumable: rerun the same command to continue)."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split of a VOC dataset input."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder of a COCO JSON input."),
    method: str = typer.Option("selective-search", "--method", help="selective-search | sliding-window | rpn (needs --model)."),
    mode: str = typer.Option("fast", "--mode", help="Selective-search strategy: fast | quality."),
    max_size: int = typer.Option(500, "--max-size", help="Resize so the longer side is at most this (pixels) before the search (R-CNN: 500)."),
    min_size: Optional[float] = typer.Option(None, "--min-box", help="Drop boxes narrower or shorter than this, in ORIGINAL pixels (default 20; 0 for rpn)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-k", help="Keep the top-K boxes per image (default: all)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed of OpenCV's random region ranking (srand before every image)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the file afresh instead of resuming."),
    model: Optional[Path] = typer.Option(None, "--model", help="Faster R-CNN run directory (for --method rpn)."),
    rpn_top_n: int = typer.Option(2000, "--rpn-top-n", help="RPN proposals per image after NMS (for --method rpn)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (for --method rpn)."),
    runtime: str = typer.Option("torch", "--runtime", help="--method rpn: the trunk's runtime (torch, onnxruntime, openvino, auto)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only every N-th image from the K-th (0 <= K < N), e.g. one machine of N; join the files with merge-proposals."),
    checkpoint_seconds: float = typer.Option(5.0, "--checkpoint-seconds", hidden=True, help="Seconds between crash-safe commits (0: after every image)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Region proposals for every image, stored in one HDF5 file (crash-safe, resumable)."""
    from rcnn_cli.config import parse_shard
    from rcnn_cli.data.inputs import resolve_inputs
    from rcnn_cli.proposals import ProposalConfig, run_propose

    items = resolve_inputs(inputs, split=split, images=images)
    if not items:
        raise UserError("no input images")
    proposer, attrs = None, None
    if method == "rpn":
        if model is None:
            raise UserError("--method rpn needs --model RUN_DIR (a trained `rcnn faster train` run)")
        from rcnn_cli.models.faster_rcnn import rpn_attrs, rpn_proposer

        proposer = rpn_proposer(model, device=device, post_nms_top_n=rpn_top_n, runtime=runtime)
        attrs = rpn_attrs(model, rpn_top_n)
        min_size = 0.0 if min_size is None else min_size
    elif model is not None:
        raise UserError("--model is only used with --method rpn")
    config = ProposalConfig(method=method if proposer is None else "rpn", mode=mode, max_size=max_size,
                            min_size=20.0 if min_size is None else min_size, limit=limit, seed=seed)
    summary = run_propose(items, out, config, workers=workers, progress=not no_progress, proposer=proposer,
                          attrs=attrs, overwrite=overwrite, checkpoint_seconds=checkpoint_seconds,
                          shard=parse_shard(shard))
    console.print(f"{summary['processed']} image(s) processed, {summary['resumed']} resumed, "
                  f"{summary['skipped']} skipped, {summary['fallbacks']} sliding-window fallback(s); "
                  f"{summary['boxes_per_image']:.0f} boxes and {summary['seconds_per_image']:.2f} s per image "
                  f"(median) -> {out}", highlight=False)


@proposals_app.command("recall")
def recall_cmd(
    dataset: Path = typer.Argument(..., help="VOC root or COCO instances JSON."),
    proposals: Path = typer.Option(..., "--proposals", "-p", help="Proposals file from `rcnn propose`."),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="VOC split."),
    images: Optional[str] = typer.Option(None, "--images", help="Image folder of a COCO JSON."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers (and curves) as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for recall_vs_proposals.png and recall_vs_iou.png."),
) -> None:
    """Recall at IoU 0.5/0.7, MABO and boxes per image (per class too); recall-vs-proposals curve.

    Ground truth is every box of the split (difficult included) except zero-area ones.
    """
    from rich.table import Table

    from rcnn_cli.data.inputs import load_dataset
    from rcnn_cli.io import write_json, write_run_record
    from rcnn_cli.evaluation.recall import plot_recall, recall_stats

    ds = load_dataset(dataset, split, images)
    stats = recall_stats(ds, proposals)
    table = Table(title=f"proposals {proposals.name}: {stats['method']} {stats.get('mode') or ''}", show_lines=False)
    for col in ("class", "gt boxes", "recall@0.5", "recall@0.7", "ABO"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, v in stats["per_class"].items():
        table.add_row(name, str(v["num_gt"]), f"{v['recall@0.5']:.3f}", f"{v['recall@0.7']:.3f}", f"{v['abo']:.3f}")
    table.add_row("[bold]all[/]", str(stats["num_gt"]), f"[bold]{stats['recall@0.5']:.3f}[/]",
                  f"[bold]{stats['recall@0.7']:.3f}[/]", f"{stats['abo']:.3f}")
    console.print(table)
    console.print(f"MABO {stats['mabo']:.3f}, average recall (0.5:0.95) {stats['average_recall']:.3f}, "
                  f"{stats['boxes_per_image']:.0f} boxes per image, {stats['num_images']} images"
                  + (f", {stats['missing_images']} missing from the file" if stats["missing_images"] else ""),
                  highlight=False)
    if json_out is not None:
        write_json(json_out, stats)
        write_run_record(json_out, "rcnn proposals recall", {"dataset": str(dataset), "split": split,
                                                             "proposals": str(proposals)})
    if plot is not None:
        paths = plot_recall(stats, plot, name=proposals.stem)
        console.print("plots: " + ", ".join(str(p) for p in paths), highlight=False)


@app.command("merge-proposals")
def merge_proposals_cmd(
    inputs: List[Path] = typer.Argument(..., help="Proposals files (e.g. the shards of one `rcnn propose --shard` run)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged proposals file."),
) -> None:
    """Join proposals files made with the same settings (refuses to mix settings)."""
    from rcnn_cli.proposals import merge_proposals

    s = merge_proposals(inputs, out)
    console.print(f"{s['images']} image(s) from {s['inputs']} file(s) -> {out}", highlight=False)
