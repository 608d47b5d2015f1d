"""Detections: the in-memory record, readers and streaming writers of the three file formats.

Formats
-------
``jsonl``
    One JSON object per line and image, written (and flushed) as soon as the image is done::

        {"image_id": "000012", "detections": [{"label": "dog", "score": 0.93, "box": [x1, y1, x2, y2]}]}

    ``timings`` (seconds per stage) may follow; readers ignore unknown keys.
``coco``
    A COCO results JSON list ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": s}]``.
    Image and category ids map through the dataset (``Dataset.category_ids`` and
    :func:`coco_image_ids`).
``voc``
    The devkit's per-class files ``comp4_det_<split>_<class>.txt`` with lines
    ``<image_id> <score> <x1> <y1> <x2> <y2>``.

Boxes are ``x1, y1, x2, y2`` in pixels. Numbers are written as the shortest decimal that reads
back to the same float32, so writing and reading is lossless.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from rcnn_cli.boxes import ImageDetections
from rcnn_cli.errors import Interrupted, UserError
from rcnn_cli.io import atomic_open, atomic_path
from rcnn_cli.log import logger


class LabelledSplit(Protocol):
    """What reading and checking detections need of a labelled split (:class:`rcnn_cli.data.dataset.Dataset`
    has it; named here so that this layer never imports the data layer above it)."""

    split: str
    classes: list[str]
    records: list
    category_ids: dict[str, int] | None

__all__ = [
    "ImageDetections",
    "DetectionWriter",
    "FORMATS",
    "open_writer",
    "read_detections",
    "coco_image_ids",
    "check_known",
    "count_detections",
]

FORMATS = ("jsonl", "coco", "voc", "yolo")


def _short(v: float) -> str:
    return str(np.float32(v))


def count_detections(detections: Mapping[str, ImageDetections]) -> int:
    return int(sum(len(d) for d in detections.values()))


# --------------------------------------------------------------------------- image id mapping


def coco_image_ids(dataset: "LabelledSplit") -> dict[str, int]:
    """The integer COCO image id of every image of ``dataset``.

    COCO datasets keep their original ids; otherwise numeric image ids (``"000012"`` -> 12) are
    used when they are all numeric and distinct, else the 1-based position in the split.
    """
    records = dataset.records
    if records and all(r.coco_id is not None for r in records):
        return {r.image_id: int(r.coco_id) for r in records}
    if records and all(r.image_id.isdigit() for r in records):
        ids = {r.image_id: int(r.image_id) for r in records}
        if len(set(ids.values())) == len(ids):
            return ids
    return {r.image_id: i + 1 for i, r in enumerate(records)}


# --------------------------------------------------------------------------- writers


class DetectionWriter:
    """Base class of the streaming writers; a context manager. ``write`` one image at a time."""

    fmt = ""

    def __init__(self) -> None:
        self.images = 0
        self.detections = 0
        self._stack = ExitStack()

    def write(self, det: ImageDetections) -> None:
        self.images += 1
        self.detections += len(det)
        self._write(det)

    def _write(self, det: ImageDetections) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "DetectionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # Leave no half-written file: the atomic writers drop their temporary files.
            self._stack.__exit__(exc_type, exc, tb)


class JsonlWriter(DetectionWriter):
    """One line per image, flushed at once; to stdout (``out`` None or ``"-"``) or a file that is
    written under a temporary name and renamed on close. Ctrl-C keeps the complete lines so far in
    ``<out>.partial`` (``out`` itself only ever holds a complete run)."""

    fmt = "jsonl"

    def __init__(self, out: str | Path | None) -> None:
        super().__init__()
        if out is None or str(out) == "-":
            self._f: IO[str] = sys.stdout
            self.path: Path | None = None
        else:
            self.path = Path(out)
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            self._f = self._stack.enter_context(open(self._tmp, "w", encoding="utf-8"))

    def _write(self, det: ImageDetections) -> None:
        self._f.write(json.dumps(det.to_json(), separators=(", ", ": ")) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self.path is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None or exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
            return super().__exit__(exc_type, exc, tb)
        self._f.flush()
        partial = self.path.with_name(self.path.name + ".partial")
        os.replace(self._tmp, partial)
        super().__exit__(exc_type, exc, tb)
        raise Interrupted(f"{self.images} images' detections kept in {partial} (complete lines); {self.path} "
                          "was not written") from None


class CocoWriter(DetectionWriter):
    """A COCO results JSON, written atomically at close."""

    fmt = "coco"

    def __init__(self, out: str | Path | None, classes: Sequence[str], category_ids: Mapping[str, int] | None,
                 image_ids: Mapping[str, int] | None) -> None:
        super().__init__()
        self.path = None if out is None or str(out) == "-" else Path(out)
        self.category_ids = dict(category_ids) if category_ids else {c: i + 1 for i, c in enumerate(classes)}
        self.image_ids = dict(image_ids) if image_ids else None
        self.results: list[dict[str, Any]] = []

    def _image_id(self, image_id: str) -> int | str:
        if self.image_ids is not None:
            if image_id not in self.image_ids:
                raise UserError(f"image '{image_id}' has no COCO image id in the dataset")
            return self.image_ids[image_id]
        # No dataset: numeric ids become ints (as COCO expects); other names stay strings,
        # which `rcnn evaluate` maps back by name.
        return int(image_id) if image_id.isdigit() else image_id

    def _write(self, det: ImageDetections) -> None:
        image_id = self._image_id(det.image_id)
        boxes = det.boxes.astype(np.float64)
        for i, label in enumerate(det.labels):
            if label not in self.category_ids:
                raise UserError(f"class '{label}' has no COCO category id")
            x1, y1, x2, y2 = boxes[i]
            self.results.append({
                "image_id": image_id,
                "category_id": int(self.category_ids[label]),
                "bbox": [float(_short(x1)), float(_short(y1)), float(_short(x2 - x1)), float(_short(y2 - y1))],
                "score": float(_short(det.scores[i])),
            })

    def close(self) -> None:
        if self.path is None:
            json.dump(self.results, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
        else:
            with atomic_open(self.path) as f:
                json.dump(self.results, f)
                f.write("\n")
        super().close()


def _output_folder(out: str | Path | None, fmt: str, what: str) -> Path:
    """The folder a per-file writer writes into; stdout or an existing file is a one-line error."""
    if out is None or str(out) == "-":
        raise UserError(f"--format {fmt} writes {what}: give a folder with --out")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: --format {fmt} needs a folder, not a file")
    return folder


class VocWriter(DetectionWriter):
    """The devkit's ``comp4_det_<split>_<class>.txt`` files in the folder ``out``, one per class
    (empty files for classes without detections), each written atomically at close."""

    fmt = "voc"

    def __init__(self, out: str | Path | None, classes: Sequence[str], split: str = "test",
                 comp: str = "comp4") -> None:
        super().__init__()
        self.folder = _output_folder(out, "voc", "one file per class")
        self.split, self.comp = split, comp
        self.lines: dict[str, list[str]] = {c: [] for c in classes}

    def _write(self, det: ImageDetections) -> None:
        if any(c.isspace() for c in det.image_id):
            raise UserError(f"image id '{det.image_id}' contains whitespace: not representable in VOC files")
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            self.lines.setdefault(label, []).append(
                f"{det.image_id} {_short(score)} {_short(box[0])} {_short(box[1])} {_short(box[2])} {_short(box[3])}\n")

    def paths(self) -> dict[str, Path]:
        return {c: self.folder / f"{self.comp}_det_{self.split}_{c}.txt" for c in self.lines}

    def close(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for c, path in self.paths().items():
            with atomic_open(path) as f:
                f.writelines(self.lines[c])
        super().close()


class YoloWriter(DetectionWriter):
    """Ultralytics' prediction labels: ``<out>/<image id>.txt`` of ``class cx cy w h conf`` lines
    (class: 0-based index in ``classes``; centre and size normalised by the image's size), each file
    written atomically, and ``<out>/classes.txt``."""

    fmt = "yolo"

    def __init__(self, out: str | Path | None, classes: Sequence[str]) -> None:
        super().__init__()
        self.folder = _output_folder(out, "yolo", "one file per image")
        self.index = {c: i for i, c in enumerate(classes)}
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.folder / "classes.txt") as f:
            f.write("".join(f"{c}\n" for c in classes))

    def _write(self, det: ImageDetections) -> None:
        if det.size is None:
            raise UserError(f"{det.image_id}: --format yolo needs the image's size")
        if "/" in det.image_id:
            raise UserError(f"image id '{det.image_id}' cannot be a file name")
        from rcnn_cli.boxes import to_yolo_boxes

        lines = [f"{self.index[label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {float(score):.6f}\n"
                 for (cx, cy, w, h), score, label in zip(to_yolo_boxes(det.boxes, *det.size), det.scores, det.labels)]
        with atomic_open(self.folder / f"{det.image_id}.txt") as f:
            f.writelines(lines)


def open_writer(out: str | Path | None, fmt: str, classes: Sequence[str], category_ids: Mapping[str, int] | None = None,
                coco_image_ids: Mapping[str, int] | None = None, split: str = "test") -> DetectionWriter:
    """A streaming detections writer (context manager; ``.write(ImageDetections)``).

    ``jsonl``: a line per image, flushed at once, to stdout when ``out`` is None or ``"-"``.
    ``coco``: a results JSON written at close (``category_ids`` class -> id, default 1..K;
    ``coco_image_ids`` image id -> int, default: numeric ids as ints). ``voc``: per-class
    ``comp4_det_<split>_<class>.txt`` files in the folder ``out``. ``yolo``: a label file per image
    in the folder ``out`` (:class:`YoloWriter`).
    """
    fmt = fmt.lower()
    if fmt == "jsonl":
        return JsonlWriter(out)
    if fmt == "coco":
        return CocoWriter(out, classes, category_ids, coco_image_ids)
    if fmt == "voc":
        return VocWriter(out, classes, split=split)
    if fmt == "yolo":
        return YoloWriter(out, classes)
    raise UserError(f"unknown detections format '{fmt}' (use one of: {', '.join(FORMATS)})")


# --------------------------------------------------------------------------- readers


class _Acc:
    """Collects detections per image in first-seen order (several lines of one image are merged)."""

    def __init__(self) -> None:
        self.boxes: dict[str, list] = {}
        self.scores: dict[str, list] = {}
        self.labels: dict[str, list] = {}
        self.order: dict[str, list] = {}
        self.timings: dict[str, dict] = {}
        self.n = 0

    def image(self, image_id: str) -> None:
        if image_id not in self.boxes:
            self.boxes[image_id], self.scores[image_id], self.labels[image_id] = [], [], []
            self.order[image_id] = []

    def add(self, image_id: str, box: list[float], score: float, label: str) -> None:
        self.image(image_id)
        self.boxes[image_id].append(box)
        self.scores[image_id].append(score)
        self.labels[image_id].append(label)
        self.order[image_id].append(self.n)
        self.n += 1

    def result(self) -> dict[str, ImageDetections]:
        return {i: ImageDetections(i, np.asarray(self.boxes[i], np.float32).reshape(-1, 4),
                                   np.asarray(self.scores[i], np.float32), self.labels[i], self.timings.get(i, {}),
                                   np.asarray(self.order[i], np.int64))
                for i in self.boxes}


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {what} is not a number: {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise UserError(f"{where}: {what} is not finite: {value!r}")
    return v


def _box(value: Any, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise UserError(f"{where}: box must be a list of 4 numbers [x1, y1, x2, y2], got {value!r}")
    return [_number(v, where, "box coordinate") for v in value]


def _read_jsonl(lines: Iterable[str], name: str, acc: _Acc) -> None:
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        where = f"{name}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict) or "image_id" not in rec:
            raise UserError(f"{where}: expected an object with \"image_id\" and \"detections\"")
        image_id = rec["image_id"]
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
            raise UserError(f"{where}: image_id must be a string, got {image_id!r}")
        image_id = str(image_id)
        dets = rec.get("detections", [])
        if not isinstance(dets, list):
            raise UserError(f"{where}: \"detections\" must be a list")
        acc.image(image_id)
        for d in dets:
            if not isinstance(d, dict) or not {"label", "score", "box"} <= d.keys():
                raise UserError(f"{where}: each detection needs \"label\", \"score\" and \"box\", got {d!r}")
            label = d["label"]
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise UserError(f"{where}: label must be a class name, got {label!r}")
            acc.add(image_id, _box(d["box"], where), _number(d["score"], where, "score"), str(label))
        if isinstance(rec.get("timings"), dict):
            acc.timings[image_id] = {str(k): float(v) for k, v in rec["timings"].items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read_coco(text: str, name: str, acc: _Acc, dataset: "LabelledSplit | None") -> None:
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{name}:{e.lineno}: malformed COCO results JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(results, list):
        raise UserError(f"{name}: a COCO results file must be a JSON list")
    by_coco_id: dict[int, str] = {}
    names: set[str] = set()
    categories: dict[int, str] = {}
    if dataset is not None:
        by_coco_id = {v: k for k, v in coco_image_ids(dataset).items()}
        names = {r.image_id for r in dataset.records}
        categories = {int(v): k for k, v in dataset.category_ids.items()}
    for i, r in enumerate(results):
        where = f"{name}: result {i}"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise UserError(f"{where}: needs image_id, category_id, bbox and score, got {r!r}"[:300])
        raw_id = r["image_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
            raise UserError(f"{where}: image_id must be an integer, got {raw_id!r}")
        if isinstance(raw_id, int) and raw_id in by_coco_id:
            image_id = by_coco_id[raw_id]
        elif str(raw_id) in names or dataset is None:
            image_id = str(raw_id)
        else:
            image_id = f"<coco image id {raw_id}>"
        cat = r["category_id"]
        if isinstance(cat, bool) or not isinstance(cat, (int, str)):
            raise UserError(f"{where}: category_id must be an integer, got {cat!r}")
        if dataset is None:
            label = str(cat)
        else:
            try:
                label = categories.get(int(cat), f"<category id {cat}>")
            except ValueError:
                label = f"<category id {cat}>"
        x, y, w, h = _box(r["bbox"], where)
        acc.add(image_id, [x, y, x + w, y + h], _number(r["score"], where, "score"), label)


_COMP_RE = re.compile(r"^(?P<comp>[^_]+)_det_(?P<rest>.+)\.txt$")


def _voc_class(path: Path, dataset: "LabelledSplit | None") -> tuple[str, str]:
    """``(split, class)`` from ``<comp>_det_<split>_<class>.txt``; with a dataset, the longest class
    name that ends the file name wins (class names may contain ``_``)."""
    m = _COMP_RE.match(path.name)
    if not m:
        raise UserError(f"{path}: not a VOC detections file name (expected comp4_det_<split>_<class>.txt)")
    rest = m.group("rest")
    if dataset is not None:
        for c in sorted(dataset.classes, key=len, reverse=True):
            if rest.endswith("_" + c):
                return rest[: -len(c) - 1], c
    split, _, cls = rest.partition("_")
    if not cls:
        raise UserError(f"{path}: cannot tell the class from the file name (expected comp4_det_<split>_<class>.txt)")
    return split, cls


def _read_voc_lines(lines: Iterable[str], name: str, label: str, acc: _Acc) -> None:
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{name}:{lineno}"
        if len(tokens) != 6:
            raise UserError(f"{where}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', got {len(tokens)} fields")
        try:
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            raise UserError(f"{where}: score and box must be numbers: {line.strip()!r}") from None
        if not all(np.isfinite(values)):
            raise UserError(f"{where}: score and box must be finite: {line.strip()!r}")
        acc.add(tokens[0], values[1:], values[0], label)


def _voc_files(folder: Path, dataset: "LabelledSplit | None") -> list[Path]:
    files = sorted(p for p in folder.glob("*_det_*.txt") if p.is_file())
    if not files:
        raise UserError(f"{folder}: no VOC detections files (<comp>_det_<split>_<class>.txt) in this folder")
    split = dataset.split if dataset is not None else None
    if split:
        same_split = [p for p in files if _voc_class(p, dataset)[0] == split]
        if same_split:
            files = same_split
    seen: dict[str, Path] = {}
    for p in files:
        _, c = _voc_class(p, dataset)
        if c in seen:
            raise UserError(f"{folder}: two detections files for class '{c}': {seen[c].name} and {p.name}")
        seen[c] = p
    return files


def read_detections(source: str | Path, dataset: "LabelledSplit | None" = None, ignore_unknown: bool = False) -> dict[str, ImageDetections]:
    """Read detections in any of the three formats; ``"-"`` reads standard input.

    The format follows the content: a JSON list is COCO results, JSON objects per line are JSON
    lines, a folder or a ``*_det_*.txt`` file is the VOC devkit's format (the class is in the file
    name). With ``dataset``, COCO ids are mapped to image ids and class names, and detections for
    images or classes outside the dataset are a :class:`UserError` (a warning and dropped with
    ``ignore_unknown``). Malformed input is a one-line :class:`UserError` naming file and line.
    """
    acc = _Acc()
    if str(source) == "-":
        name = "<stdin>"
        text = sys.stdin.read()
        _read_text(text, name, acc, dataset, None)
    else:
        path = Path(source)
        name = str(path)
        if path.is_dir():
            for p in _voc_files(path, dataset):
                _, label = _voc_class(p, dataset)
                _read_voc_lines(_read_text_file(p).splitlines(), str(p), label, acc)
        elif path.is_file():
            _read_text(_read_text_file(path), name, acc, dataset, path)
        else:
            raise UserError(f"{path}: detections file not found")
    detections = acc.result()
    if dataset is not None:
        detections = check_known(detections, dataset, ignore_unknown, source=name)
    return detections


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _read_text(text: str, name: str, acc: _Acc, dataset: "LabelledSplit | None", path: Path | None) -> None:
    head = text.lstrip()[:1]
    if head == "[":
        _read_coco(text, name, acc, dataset)
    elif head == "{":
        _read_jsonl(text.splitlines(), name, acc)
    elif head == "":
        return  # empty input: no detections (valid)
    elif path is not None and _COMP_RE.match(path.name):
        _, label = _voc_class(path, dataset)
        _read_voc_lines(text.splitlines(), name, label, acc)
    else:
        hint = " (VOC detections files must be named <comp>_det_<split>_<class>.txt)" if path is None or path.suffix == ".txt" else ""
        raise UserError(f"{name}:1: not a detections file: expected JSON lines, a COCO results list "
                        f"or VOC comp4 lines{hint}")


def check_known(detections: Mapping[str, ImageDetections], dataset: "LabelledSplit", ignore_unknown: bool = False,
                source: str = "detections") -> dict[str, ImageDetections]:
    """Detections restricted to the dataset's images and classes.

    Anything else is a :class:`UserError` naming a few offenders, or, with ``ignore_unknown``, a
    warning and dropped.
    """
    ids = {r.image_id for r in dataset.records}
    classes = set(dataset.classes)
    unknown_images = [i for i in detections if i not in ids and len(detections[i]) > 0]
    empty_unknown = [i for i in detections if i not in ids and len(detections[i]) == 0]
    unknown_classes: dict[str, int] = {}
    for image_id, det in detections.items():
        if image_id in ids:
            for label in det.labels:
                if label not in classes:
                    unknown_classes[label] = unknown_classes.get(label, 0) + 1
    split = f" split '{dataset.split}'" if dataset.split else ""
    problems = []
    if unknown_images or empty_unknown:
        bad = unknown_images + empty_unknown
        n_det = sum(len(detections[i]) for i in bad)
        problems.append(f"{len(bad)} image(s) not in the dataset{split} ({n_det} detections; e.g. "
                        f"{', '.join(repr(i) for i in bad[:3])})")
    if unknown_classes:
        names = sorted(unknown_classes)
        problems.append(f"{sum(unknown_classes.values())} detections of unknown class(es) "
                        f"{', '.join(repr(c) for c in names[:5])} (classes: {', '.join(dataset.classes)})")
    if not problems:
        return dict(detections)
    message = f"{source}: " + "; ".join(problems)
    if not ignore_unknown:
        raise UserError(message + " (use --ignore-unknown to skip them)")
    logger.warning("%s; ignored", message)
    out: dict[str, ImageDetections] = {}
    for image_id, det in detections.items():
        if image_id not in ids:
            continue
        if unknown_classes:
            keep = np.array([lab in classes for lab in det.labels], bool)
            if not keep.all():
                det = ImageDetections(image_id, det.boxes[keep], det.scores[keep],
                                      [lab for lab, k in zip(det.labels, keep) if k], det.timings,
                                      det.order[keep] if det.order is not None else None)
        out[image_id] = det
    return out
