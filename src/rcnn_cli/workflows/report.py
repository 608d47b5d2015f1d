"""The report of ``rcnn compare``: the lecture's rows, ``compare.md``, the rich table, ``compare.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rcnn_cli.log import console
from rcnn_cli.registry import compared, method

__all__ = ["title", "claims", "map_interval", "table_rows", "markdown", "print_table", "plot_compare",
           "fmt_seconds", "fmt_x"]


def _title(name: str) -> str:
    return method(name).title


def title(report: Mapping[str, Any]) -> str:
    return " vs ".join(_title(m) for m in report["methods"]) + f" ({report['budget']} budget)"


def _val(report: Mapping[str, Any], m: str, *path: str) -> float | None:
    v: Any = report["results"].get(m, {})
    for p in path:
        v = v.get(p) if isinstance(v, Mapping) else None
    return v


def claims(report: Mapping[str, Any]) -> list[str]:
    """The lecture's claims beside what this run measured (each method's ``compare.claim``; only those
    whose methods were run)."""
    out = []
    for m in compared():
        claim = m.compare.claim(report) if m.compare.claim and m.name in report["methods"] else None
        if claim:
            out.append(claim)
    return out


# ----------------------------------------------------------------------------------------------
# output: rows, markdown, rich, figure
# ----------------------------------------------------------------------------------------------

def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{1000 * s:.0f} ms" if s >= 0.01 else f"{1000 * s:.1f} ms"


def fmt_x(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"


def _fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def map_interval(voc12: Mapping[str, Any]) -> list[float] | None:
    """``[low, high]`` of a VOC12 evaluate result's 95 % bootstrap interval (fractions); ``None`` for
    results stored without one."""
    ci = (voc12.get("bootstrap") or {}).get("mAP")
    return [float(ci["low"]), float(ci["high"])] if ci else None


def _fmt_interval(v: Sequence[float] | None) -> str:
    return "—" if not v else f"{100 * v[0]:.1f} to {100 * v[1]:.1f}"


def table_rows(results: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The lecture's rows: ``[{"row", "key", "unit", "values": {method: number}, "text": {method: str}}]``."""
    def get(m: str, *path: str) -> Any:
        v: Any = results[m]
        for p in path:
            if not isinstance(v, Mapping) or p not in v:
                return None
            v = v[p]
        return v

    specs = [
        ("training time", "train_seconds", "s", ("train_seconds",), fmt_seconds),
        ("test time / image (without proposals)", "test_without_proposals", "s",
         ("test_seconds_per_image", "without_proposals"), fmt_seconds),
        ("test time / image (with proposals)", "test_with_proposals", "s",
         ("test_seconds_per_image", "with_proposals"), fmt_seconds),
        ("speedup vs R-CNN (without proposals)", "speedup_without_proposals", "x",
         ("speedup", "without_proposals"), fmt_x),
        ("speedup vs R-CNN (with proposals)", "speedup_with_proposals", "x", ("speedup", "with_proposals"), fmt_x),
        ("mAP@0.5 VOC07 (%)", "map_voc07", "fraction", ("mAP", "voc07"), _fmt_pct),
        ("mAP@0.5 VOC12 (%)", "map_voc12", "fraction", ("mAP", "voc12"), _fmt_pct),
        ("VOC12 95 % interval over the test images (%)", "map_voc12_interval", "fraction", ("mAP_interval",),
         _fmt_interval),
        ("proposal recall@0.5 (%)", "recall_0.5", "fraction", ("recall", "recall@0.5"), _fmt_pct),
        ("proposal recall@0.7 (%)", "recall_0.7", "fraction", ("recall", "recall@0.7"), _fmt_pct),
        ("proposal time / image", "proposal_seconds", "s", ("test_seconds_per_image", "proposals"),
         lambda v: "in network" if v is None else fmt_seconds(v)),
        ("proposals / image (timed)", "proposals_per_image", "count", ("proposals_per_image",),
         lambda v: "—" if v is None else f"{v:.0f}"),
        ("proposal source", "proposal_source", "text", ("proposal_source",), lambda v: v or "—"),
        ("network input", "input", "text", ("input",), lambda v: v or "—"),
    ]
    rows = []
    for label, key, unit, path, fmt in specs:
        values = {m: get(m, *path) for m in methods}
        rows.append({"row": label, "key": key, "unit": unit, "values": values,
                     "text": {m: fmt(values[m]) for m in methods}})
    return rows


def _settings_lines(report: Mapping[str, Any]) -> list[str]:
    s, methods = report["settings"], report["methods"]
    P = s["proposals"]
    lim = P["limit"] if P["limit"] else "all"
    lines = [f"- data: `{report['dataset']}` ({report['train_split']} {report['train_images']} images -> "
             f"{report['test_split']} {report['test_images']} images); backbone `{report['backbone']}` "
             f"({s['model']['weights']} weights); seed {report['seed']}"]
    if any(m.compare.proposals is None for m in compared() if m.name in methods):
        sharing = ", ".join(m.title for m in compared() if m.name in methods and m.compare.proposals is None)
        lines.append(f"- proposals ({sharing}, the same files): {P['method']} {P['mode']}, image resized "
                     f"to max side {P['max_size']}, boxes >= {P['min_size']} px, top {lim} per image")
    lines += [m.compare.describe(s, report) for m in compared() if m.name in methods]
    d = s["detect"]
    lines.append("- network input: R-CNN warps each region to WxW with P pixels of image context (WxW+P); Fast and "
                 "Faster R-CNN resize the whole image to shorter side/longer side at most (S/L px)")
    lines.append(f"- detection (all): score >= {d['score_threshold']}, per-class NMS {d['nms']}, top {d['top_k']}")
    t = report["timing"]
    th = report["threads"]
    lines.append(f"- timing (in a fresh process, after all training): median over {t['images']} test images "
                 f"({t['repeats']} run(s) each) after {t['warmup']} warm-up call(s); images decoded beforehand; "
                 f"selective search live with the training settings; device {report['device_name']}; "
                 f"torch threads {th.get('torch')} (inter-op {th.get('torch_interop')}), "
                 f"OpenCV threads {th.get('opencv')}")
    lines.append("- training time: wall time of the training stages (R-CNN: feature extraction of the training "
                 "proposals, fine-tuning, SVMs, box regressors; Fast/Faster: the training loop with model building); "
                 "the selective search of the training images is not included (R-CNN and Fast R-CNN share it: "
                 f"{fmt_seconds(_shared_proposal_seconds(report))})")
    if report.get("overrides"):
        lines.append(f"- overridden settings: `{json.dumps(report['overrides'], sort_keys=True)}`")
    return lines


def _shared_proposal_seconds(report: Mapping[str, Any]) -> float | None:
    for m in compared():
        v = report["results"].get(m.name, {}).get("train_proposals_seconds")
        if v is not None:
            return float(v)
    return None


def markdown(report: Mapping[str, Any]) -> str:
    """``compare.md``: the table, then every setting behind it."""
    methods = report["methods"]
    head = "| | " + " | ".join(_title(m) for m in methods) + " |"
    sep = "|---|" + "|".join("---:" for _ in methods) + "|"
    lines = [f"# {title(report)}", "", head, sep]
    for row in report["rows"]:
        cells = [row["row"]] + [row["text"][m] for m in methods]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if claims(report):
        lines += ["", "## The lecture's claims, measured", ""] + claims(report)
    lines += ["", "## Settings", ""] + _settings_lines(report)
    st = ", ".join(f"{_title(m)} {report['results'][m].get('status', '')}" for m in methods)
    lines += ["", f"Status of this run: {st}; total {fmt_seconds(report['total_seconds'])} "
                  f"(reused stages count their recorded time in the table, not here).", ""]
    return "\n".join(lines)


def print_table(report: Mapping[str, Any]) -> None:
    """Print the table (rich, stderr) and the settings below it."""
    from rich.table import Table

    methods = report["methods"]
    t = Table(title=f"{title(report)}, {report['backbone']}",
              title_justify="left",
              caption=f"{report['device_name']}; torch threads {report['threads'].get('torch')}; median of "
                      f"{report['timing']['images']} test images",
              caption_justify="left")
    t.add_column("", no_wrap=True)
    for m in methods:
        t.add_column(_title(m), justify="right")
    for row in report["rows"]:
        if row["key"] in ("map_voc07", "recall_0.5", "proposals_per_image"):
            t.add_section()
        t.add_row(row["row"], *[row["text"][m] for m in methods])
    console.print(t)
    for line in claims(report) + _settings_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def plot_compare(report: Mapping[str, Any], out_png: str | Path) -> Path:
    """``compare.png``: time per image (log axis; with and without proposals) beside mAP (VOC07/VOC12;
    VOC12 with its 95 % interval over the test images as an error bar), one bar group per method."""
    import numpy as np

    from rcnn_cli.visualize import PALETTE, _pyplot, _savefig

    plt = _pyplot()
    methods = report["methods"]
    res = report["results"]
    names = [_title(m) for m in methods]
    x = np.arange(len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = [np.asarray(c) / 255.0 for c in PALETTE]
    try:
        width = 0.38
        series = [("with proposals", "with_proposals", colors[0]), ("without proposals", "without_proposals", colors[10])]
        for i, (label, key, color) in enumerate(series):
            vals = np.asarray([res[m]["test_seconds_per_image"][key] for m in methods], np.float64)
            bars = ax1.bar(x + (i - 0.5) * width, vals, width, label=label, color=color)
            for b, v in zip(bars, vals):
                ax1.annotate(fmt_seconds(float(v)), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax1.set_yscale("log")
        allv = [res[m]["test_seconds_per_image"][k] for m in methods for k in ("with_proposals", "without_proposals")]
        allv = [v for v in allv if v and v > 0]
        if allv:
            ax1.set_ylim(10 ** np.floor(np.log10(min(allv)) - 0.3), 10 ** np.ceil(np.log10(max(allv)) + 0.3))
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax1.yaxis.set_major_locator(LogLocator(base=10))
        ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_seconds(float(v))))
        labels = []
        for m in methods:
            sp = res[m].get("speedup", {})
            if not method(m).compare.reference and sp.get("with_proposals"):
                labels.append(f"{_title(m)}\n{fmt_x(sp['with_proposals'])} faster\n"
                              f"({fmt_x(sp.get('without_proposals'))} w/o proposals)")
            else:
                labels.append(_title(m))
        ax1.set_xticks(x, labels, fontsize=8.5)
        ax1.set_ylabel("test time per image (log scale)")
        ax1.set_title("test time per image (median)")
        ax1.grid(True, axis="y", which="both", alpha=0.3)
        ax1.legend(loc="upper right", fontsize="small")
        for i, (metric, color) in enumerate((("voc07", colors[2]), ("voc12", colors[12]))):
            vals = np.asarray([100 * (res[m]["mAP"][metric] or 0.0) for m in methods], np.float64)
            ci = [res[m].get("mAP_interval") if metric == "voc12" else None for m in methods]
            low = np.asarray([100 * c[0] if c else v for c, v in zip(ci, vals)])
            high = np.asarray([100 * c[1] if c else v for c, v in zip(ci, vals)])
            yerr = np.stack([np.maximum(vals - low, 0), np.maximum(high - vals, 0)]) if any(ci) else None
            bars = ax2.bar(x + (i - 0.5) * width, vals, width, label=f"mAP@0.5 {metric.upper()}", color=color,
                           yerr=yerr, capsize=3, error_kw={"elinewidth": 0.8, "alpha": 0.7})
            for b, v, top in zip(bars, vals, np.maximum(high, vals)):
                ax2.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, top), ha="center", va="bottom", fontsize=8,
                             xytext=(0, 2), textcoords="offset points")
        ax2.set_ylim(0, 115)
        ax2.set_xticks(x, names, fontsize=8.5)
        ax2.set_ylabel("mAP@0.5 (%)")
        ax2.set_title("accuracy on the test split (VOC12: 95 % interval over its images)")
        ax2.grid(True, axis="y", alpha=0.3)
        ax2.legend(loc="upper center", fontsize="small", ncol=2)
        th = report["threads"]
        fig.suptitle(f"{report['backbone']}, {report['budget']} budget, {report['device_name']}, "
                     f"{th.get('torch')} torch threads", fontsize=10)
        return _savefig(fig, out_png)
    finally:
        plt.close(fig)
