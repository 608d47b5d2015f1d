"""``rcnn compare``: the lecture's table, measured here: Overfeat (the dense sliding window), HOG + SVM
(the pre-CNN baseline), R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1.

The detectors are trained and evaluated with the same backbone (HOG has none), the same data and,
for HOG + SVM, R-CNN and Fast R-CNN, the same proposals files, all inside one folder ``OUT``:

- ``data/``: the built-in shapes data (when no DATASET);
- ``<method>/``: each method's run directory, test detections and stage records, made by its step
  (``Method.compare.step`` in its module; R-CNN's pipeline also writes the selective-search files
  ``proposals_<split>.h5`` that HOG + SVM and Fast R-CNN read);
- ``stages/``: compare's own stage records (config hashes, :class:`rcnn_cli.rcnn.pipeline.StageRunner`);
- ``compare.json`` / ``compare.md`` / ``compare.png``: the table, its settings, the figure.

Every stage is skipped on a rerun when its recorded configuration hash matches (the pipeline's
:class:`~rcnn_cli.rcnn.pipeline.StageRunner`); an interrupted Fast/Faster training of the same
configuration resumes from its checkpoint.

Timing: :mod:`rcnn_cli.workflows.timing` (the one inference loop, in a fresh child process after all
training); the report: :mod:`rcnn_cli.workflows.report`.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rcnn_cli.detector import DetectConfig
from rcnn_cli.errors import UserError
from rcnn_cli.io.files import jsonable
from rcnn_cli.log import console, logger
from rcnn_cli.registry import compared
from rcnn_cli.workflows.report import map_interval, markdown, plot_compare, print_table, table_rows
from rcnn_cli.workflows.timing import speedups, threads_info, time_in_child
from rcnn_cli.method import DEFAULT_BACKBONE

__all__ = ["METHODS", "BUDGETS", "budget_settings", "run_compare", "print_table", "parse_methods", "parse_set",
           "Context"]

#: The methods ``rcnn compare`` runs, in the lecture's order (the registry's).
METHODS = tuple(m.name for m in compared())

#: Settings every method shares, per budget. ``quick`` fits 2 CPU cores in minutes on the built-in
#: data; ``full`` uses the papers' settings (2000 proposals, ...). Each method's own section comes
#: from its registry entry (``Method.compare.settings``).
SHARED: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "data": {"train": 200, "test": 50, "size": 256},
        "model": {"weights": "imagenet"},
        "proposals": {"method": "selective-search", "mode": "fast", "max_size": 256, "min_size": 16, "limit": 100,
                      "workers": None},
        "detect": DetectConfig().to_dict(),
        "timing": {"images": 6, "warmup": 1, "repeats": 3},
    },
    "full": {
        "data": {"train": 200, "test": 50, "size": 256},
        "model": {"weights": "imagenet"},
        "proposals": {"method": "selective-search", "mode": "fast", "max_size": 500, "min_size": 20, "limit": 2000,
                      "workers": None},
        "detect": DetectConfig().to_dict(),
        "timing": {"images": 10, "warmup": 1, "repeats": 1},
    },
}

#: The two budgets, whole: the shared sections and one section per method.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    budget: {**{k: v for k, v in shared.items() if k != "detect" and k != "timing"},
             **{m.name: dict(m.compare.settings[budget]) for m in compared()},
             "detect": shared["detect"], "timing": shared["timing"]}
    for budget, shared in SHARED.items()}


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------

def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def parse_methods(methods: str | Sequence[str] | None) -> list[str]:
    """``"rcnn,fast"`` -> ``["rcnn", "fast"]`` in the lecture's order; a method is named by its name,
    its title (``Faster R-CNN``, ``YOLO v1``, in any case and punctuation) or a format-1 kind; unknown
    names are a UserError."""
    if methods is None:
        return list(METHODS)
    items = methods.replace(" ", "").split(",") if isinstance(methods, str) else list(methods)
    items = [m.strip() for m in items if m and m.strip()]
    aliases = {_key(alias): m.name for m in compared() for alias in (m.name, m.title, *m.legacy)}
    bad = [m for m in items if _key(m) not in aliases]
    if bad:
        raise UserError(f"--methods: unknown method '{bad[0].lower()}' (choose from {', '.join(METHODS)})")
    if not items:
        raise UserError(f"--methods: give at least one of {', '.join(METHODS)}")
    chosen = {aliases[_key(m)] for m in items}
    return [m for m in METHODS if m in chosen]


def parse_set(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["fast.epochs=8", "proposals.limit=200"]`` -> ``{"fast": {"epochs": 8}, ...}`` (JSON values,
    else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. fast.epochs=8")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


def budget_settings(budget: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The settings of a budget with ``overrides`` (``{section: {key: value}}``) applied.

    Unknown budgets, sections or keys are a :class:`UserError` (a typo must not pass silently).
    """
    if budget not in BUDGETS:
        raise UserError(f"--budget: unknown budget '{budget}' (choose quick or full)")
    settings = copy.deepcopy(BUDGETS[budget])
    for section, values in (overrides or {}).items():
        if section not in settings:
            raise UserError(f"unknown settings section '{section}' (one of {', '.join(settings)})")
        for key, value in dict(values).items():
            if key not in settings[section]:
                raise UserError(f"unknown setting '{section}.{key}' (known: {', '.join(settings[section])})")
            settings[section][key] = value
    t = settings["timing"]
    if int(t["images"]) < 1 or int(t["warmup"]) < 0 or int(t["repeats"]) < 1:
        raise UserError("timing needs at least 1 image and 1 repeat, and warm-up >= 0")
    return settings


# ----------------------------------------------------------------------------------------------
# timing (shared with scripts/bench_detect.py)
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def _recall_summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("recall@0.5", "recall@0.7", "abo", "mabo", "average_recall", "boxes_per_image", "num_images",
            "num_gt", "missing_images", "method", "mode", "proposals")
    return {k: stats.get(k) for k in keep}


def _train_stage(st, name: str, config: dict, run_dir: Path, train: Callable[[bool], Any]) -> Any:
    """A training stage through ``st`` (a StageRunner): an interrupted run of the same configuration
    (``stages/<name>.pending.json`` + ``run_dir/checkpoint``) resumes; anything else starts clean."""
    from rcnn_cli.engine.checkpoint import CHECKPOINT_DIR
    from rcnn_cli.io import read_json, write_json
    from rcnn_cli.rcnn.pipeline import STAGES_DIR, config_hash

    h = config_hash(config)
    pending = st.run_dir / STAGES_DIR / f"{name}.pending.json"
    resumable = False
    if pending.is_file() and (run_dir / CHECKPOINT_DIR).is_dir():
        try:
            resumable = read_json(pending).get("hash") == h
        except UserError:
            resumable = False

    def fn() -> Any:
        write_json(pending, {"stage": name, "hash": h})
        result = train(resumable)
        pending.unlink(missing_ok=True)
        return result

    return st.run(name, config, [run_dir / "model.safetensors"], fn, clean=[] if resumable else [run_dir])


def _detect_split(detector, dataset, det_path: Path, progress: bool) -> dict[str, Any]:
    """Detect every image of ``dataset`` into ``det_path`` (JSON lines) and evaluate VOC07/VOC12."""
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.inference import DetectOutput, run_inference
    from rcnn_cli.rcnn.pipeline import evaluate_file

    with detector:
        inputs = [ImageInput(r.image_id, r.path) for r in dataset.records]
        summary = run_inference(detector, inputs, DetectOutput(det_path, "jsonl"), classes=detector.classes,
                                progress=progress)
    summary.pop("per_image", None)
    return {"detect": jsonable(summary), **evaluate_file(det_path, dataset)}


def _provider():
    """The method whose step writes the shared selective-search files (R-CNN's pipeline)."""
    return next(m for m in compared() if m.compare.provides_proposals)


@dataclass
class Context:
    """What the methods' compare steps (``Method.compare.step``) are given: the settings, the data,
    the stage runner, where each result goes, and the helpers every step uses."""

    out: Path
    settings: dict[str, Any]
    methods: list[str]
    backbone: str
    device: str
    seed: int
    progress: bool
    command: str
    runtime: str = "torch"
    st: Any = None
    data: Any = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_proposals_seconds: float | None = None
    _shared_done: bool = False

    map_interval = staticmethod(map_interval)
    recall_summary = staticmethod(_recall_summary)

    @property
    def proposals_dir(self) -> Path:
        """Where the shared selective-search files are (the providing method's folder)."""
        return self.out / _provider().name

    def proposals_file(self, split: str) -> Path:
        return self.proposals_dir / f"proposals_{split}.h5"

    def stage_hash(self, run_dir: Path, name: str) -> str | None:
        """The configuration hash a pipeline stage recorded in ``run_dir`` (``None`` if none)."""
        from rcnn_cli.io import read_json
        from rcnn_cli.rcnn.pipeline import STAGES_DIR

        path = run_dir / STAGES_DIR / f"{name}.json"
        if not path.is_file():
            return None
        try:
            return read_json(path).get("hash")
        except UserError:
            return None

    def proposals_hash(self, tag: str) -> str | None:
        return self.stage_hash(self.proposals_dir, tag)

    def shared_proposals(self) -> None:
        """Run the providing method's step once (it writes the shared proposals files)."""
        if not self._shared_done:
            provider = _provider()
            console.print(f"[bold]{provider.title}[/]", highlight=False)
            provider.compare.step(self)
            self._shared_done = True

    def status(self, names: Sequence[str]) -> str:
        return "reused" if all(self.st.timings[n]["status"] == "skipped" for n in names) else "ran"

    def stage_config(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """A training stage's configuration (its hash decides reuse): the method's ``settings`` with the
        backbone, weights, seed, device, training split and the data's identity."""
        return {**settings, "backbone": self.backbone, "weights": self.settings["model"]["weights"], "seed": self.seed,
                "device": self.device, "train_split": self.data.train_split, **self.data.data_id}

    def train_config(self, s: Mapping[str, Any]):
        from rcnn_cli.engine import TrainConfig

        return TrainConfig(epochs=int(s["epochs"]), lr=float(s["lr"]), lr_steps=tuple(s["lr_steps"] or ()),
                           warmup_iters=int(s["warmup_iters"]), batch_size=int(s["batch_size"]), seed=self.seed,
                           device=self.device, max_iters=s["max_iters"], progress=self.progress)

    def train_and_evaluate(self, name: str, config: dict, run_dir: Path, train: Callable[[bool], dict],
                           load: Callable[[], Any], eval_extra: dict | None = None) -> dict[str, Any]:
        """Stages ``<name>-train`` (``train(resume)``'s summary; resumable) and ``<name>-eval`` (detect the
        test split with ``load()``'s detector, VOC07/VOC12); returns the method's result row data."""
        st, d = self.st, self.data
        _train_stage(st, f"{name}-train", config, run_dir,
                     lambda resume: jsonable({k: v for k, v in train(resume).items() if k != "history"}))
        det_path = run_dir / f"detections_{d.test_split}.jsonl"
        ev = st.run(f"{name}-eval", {"train": st.hashes[f"{name}-train"], **(eval_extra or {}), "split": d.test_split},
                    [det_path], lambda: _detect_split(load(), d.test_ds, det_path, self.progress), clean=[det_path])
        return {"status": self.status((f"{name}-train", f"{name}-eval")), "run_dir": str(run_dir),
                "train_seconds": float(st.timings[f"{name}-train"]["seconds"]),
                "mAP": {m: ev[m]["mAP"] for m in ("voc07", "voc12")}, "mAP_interval": map_interval(ev["voc12"])}


def _selective_search_recall(c: Context) -> None:
    """Recall of the shared selective-search proposals, for every method that reads them."""
    from rcnn_cli.evaluation.recall import recall_stats

    prop_test = c.proposals_file(c.data.test_split)
    ss = c.st.run("ss-recall", {"proposals": c.proposals_hash("propose-test"), "split": c.data.test_split},
                  [prop_test], lambda: _recall_summary(recall_stats(c.data.test_ds, prop_test)), clean=[])
    for m in compared():
        if m.name in c.methods and m.compare.proposals is None:
            c.results[m.name]["recall"] = ss


def _timing_step(c: Context) -> None:
    """After all training, every method timed on the same test images in one fresh child process."""
    T = c.settings["timing"]
    ids = [r.image_id for r in c.data.test_ds.records[: int(T["images"])]]
    base = {"images": ids, "warmup": int(T["warmup"]), "repeats": int(T["repeats"]), "device": c.device,
            "threads": threads_info(), "runtime": c.runtime}
    items = [(r.image_id, str(r.path)) for r in c.data.test_ds.records]
    console.print(f"[bold]timing[/] on {len(ids)} test images (+{T['warmup']} warm-up), in a fresh process",
                  highlight=False)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        for m in compared():
            if m.name not in c.methods:
                continue
            entry = m.compare
            model_hash, run_dir = (entry.timed(c) if entry.timed else
                                   (c.st.hashes.get(f"{m.name}-train"), c.out / m.name))
            job = (str(run_dir), str(c.device), entry.detect_options(c.settings), items, int(T["images"]),
                   int(T["warmup"]), int(T["repeats"]), int(base["threads"]["torch"]),
                   c.runtime if entry.runtime else "torch")
            c.results[m.name]["timing"] = c.st.run(f"timing-{m.name}", dict(base, model=model_hash), [],
                                                   lambda job=job: child.submit(time_in_child, *job).result())


def _table_step(c: Context) -> None:
    """Per-image test times, proposal sources and speedups from the timings."""
    P, s = c.settings["proposals"], c.settings
    chosen = [m for m in compared() if m.name in c.methods]
    for m in chosen:
        r, entry = c.results[m.name], m.compare
        tm = r["timing"]["median"]
        shared = entry.proposals is None  # the regions come from the shared selective search, else the network
        r["test_seconds_per_image"] = {"without_proposals": tm["without_proposals"], "with_proposals": tm["total"],
                                       "proposals": tm["proposals"] if shared else None,
                                       "network": tm["network"], "post": tm["post"]}
        r["proposals_per_image"] = r["timing"].get("proposals_per_image")
        r["proposal_source"] = f"SS {P['mode']} @{P['max_size']}px" if shared else entry.proposals(s)
        r["input"] = entry.input_text(s, r)
        if shared:
            r["train_proposals_seconds"] = c.train_proposals_seconds
    reference = next((m.name for m in chosen if m.compare.reference), None)
    for key in ("without_proposals", "with_proposals"):
        sp = speedups({m.name: c.results[m.name]["test_seconds_per_image"][key] for m in chosen},
                      reference=reference or "")
        for m in chosen:
            c.results[m.name].setdefault("speedup", {})[key] = sp[m.name] if reference else None


def _write_report(c: Context, budget: str, overrides: dict, t_start: float) -> dict[str, Any]:
    from rcnn_cli.io import atomic_open, write_json, write_run_record

    d, first = c.data, c.results[c.methods[0]]["timing"]
    T = c.settings["timing"]
    report = {
        "command": c.command, "dataset": d.path, "train_split": d.train_split, "test_split": d.test_split,
        "budget": budget, "backbone": c.backbone, "methods": c.methods, "seed": c.seed, "runtime": c.runtime,
        "device": first["device"], "device_name": first["device_name"], "threads": first["threads"],
        "settings": c.settings, "overrides": jsonable(overrides),
        "train_images": len(d.train_ds.records), "test_images": len(d.test_ds.records),
        "timing": {"images": len(first["per_image"]), "warmup": int(T["warmup"]), "repeats": int(T["repeats"]),
                   "image_ids": [e["image_id"] for e in first["per_image"]]},
        "results": jsonable(c.results), "rows": table_rows(c.results, c.methods), "stages": c.st.timings,
        "total_seconds": time.perf_counter() - t_start, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(c.out / "compare.json", report)
    with atomic_open(c.out / "compare.md") as f:
        f.write(markdown(report))
    try:
        plot_compare(report, c.out / "compare.png")
    except Exception as e:  # noqa: BLE001 - a figure problem must not lose the measured table
        logger.warning("compare.png not written: %s", e)
    write_run_record(c.out / "compare.json", c.command, {
        "dataset": d.path, "train_split": d.train_split, "test_split": d.test_split, "backbone": c.backbone,
        "methods": c.methods, "budget": budget, "device": c.device, "seed": c.seed, "settings": c.settings,
        "overrides": jsonable(overrides), "stage_hashes": c.st.hashes})
    return report


def run_compare(dataset: str | Path | None = None, train_split: str | None = None, test_split: str = "test",
                out: str | Path = "compare", backbone: str = DEFAULT_BACKBONE,
                methods: str | Sequence[str] | None = None, budget: str = "quick", device: str = "auto",
                seed: int = 0, progress: bool = True, images: str | Path | None = None,
                timing_images: int | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                command: str = "rcnn compare", runtime: str = "torch") -> dict[str, Any]:
    """Train, evaluate and time Overfeat, HOG + SVM, R-CNN, Fast R-CNN, Faster R-CNN and YOLO v1 (``methods``,
    default all) in ``out``; write the table.

    ``dataset``: a VOC root (``train_split``/``test_split``) or COCO JSON (``images``); ``None``
    generates the built-in shapes data into ``out/data``. ``budget``: ``quick`` or ``full`` (see
    :data:`BUDGETS`); ``overrides`` (``{section: {key: value}}``) change single settings and are
    recorded. ``timing_images`` overrides ``timing.images``. ``runtime``: the CNN's runtime in the timed
    detectors (torch, onnxruntime, openvino, auto; recorded in the report). Returns the dict written to
    ``out/compare.json`` (also ``compare.md``, ``compare.png``, ``compare.json.config.json``).
    """
    from rcnn_cli.backbones import get_spec
    from rcnn_cli.device import resolve_device
    from rcnn_cli.rcnn.pipeline import StageRunner, prepare_data

    ov = {k: dict(v) for k, v in (overrides or {}).items()}
    if timing_images is not None:
        ov.setdefault("timing", {})["images"] = int(timing_images)
    settings = budget_settings(budget, ov)
    spec = get_spec(backbone)  # unknown backbone: UserError before any work
    for section in settings.values():  # a warp size of None is the backbone's native size
        if isinstance(section, dict) and "warp_size" in section and section["warp_size"] is None:
            section["warp_size"] = int(spec.native_size)
    resolve_device(device)  # a bad --device fails now, not after an hour
    from rcnn_cli.backends import resolve_runtime

    c = Context(Path(out), settings, parse_methods(methods), backbone, device, seed, progress, command,
                resolve_runtime(runtime))
    c.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    c.st = StageRunner(c.out, progress)
    c.data = prepare_data(c.st, dataset, images, train_split, test_split, settings["data"], seed)
    c.results = {m: {} for m in c.methods}
    for m in compared():
        if m.name not in c.methods:
            continue
        if m.compare.provides_proposals:
            c.shared_proposals()
            continue
        console.print(f"[bold]{m.title}[/]", highlight=False)
        m.compare.step(c)
    if any(m.compare.proposals is None for m in compared() if m.name in c.methods):
        _selective_search_recall(c)
    _timing_step(c)
    _table_step(c)
    return _write_report(c, budget, ov, t_start)
