"""Image inputs for stages that need no labels: files, folders, globs, list files, ``-`` (stdin),
or a labelled dataset (VOC root with ``--split``, COCO JSON with ``--images``)."""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

from rcnn_cli.data.coco import load_coco
from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import IMAGE_EXTENSIONS
from rcnn_cli.data.voc import is_voc_root, load_voc
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger


@dataclass(frozen=True)
class ImageInput:
    """An image to process: its id (file stem or dataset id), path, and what the detections record
    about it beside the boxes (``meta``: a video frame's ``frame`` and ``time_s``)."""

    image_id: str
    path: Path
    meta: dict | None = field(default=None, hash=False, compare=False)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_dataset(path: str | Path) -> bool:
    """A VOC root, a COCO ``.json`` file, a YOLO dataset (``data.yaml``) or a LabelMe folder."""
    from rcnn_cli.data.labelme import is_labelme_folder
    from rcnn_cli.data.yolo import is_yolo_root

    path = Path(path)
    return (is_voc_root(path) or (path.is_file() and path.suffix.lower() == ".json") or is_yolo_root(path)
            or is_labelme_folder(path))


def load_dataset(path: str | Path, split: str | None = None, images: str | Path | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load a labelled dataset: a VOC root (``split``), a COCO instances JSON (``images``), a YOLO
    dataset (its ``data.yaml`` or folder; ``split`` a key of it) or a LabelMe folder."""
    from rcnn_cli.data.labelme import is_labelme_folder, load_labelme
    from rcnn_cli.data.yolo import is_yolo_root, load_yolo

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset not found")
    if is_voc_root(path):
        return load_voc(path, split, classes)
    if is_yolo_root(path):
        return load_yolo(path, split, classes)
    if path.suffix.lower() == ".json":
        return load_coco(path, images, classes)
    if is_labelme_folder(path):
        return load_labelme(path, split, classes)
    raise UserError(f"{path}: not a dataset (expected a VOC root with Annotations/, a COCO .json, a YOLO data.yaml "
                    "or a folder of LabelMe .json files)")


#: The splits conventionally meant for training, in the order a training command takes them.
TRAINING_SPLITS = ("trainval", "train")


def dataset_splits(path: str | Path) -> list[str] | None:
    """The splits a dataset defines (VOC ``ImageSets/Main/<s>.txt``, YOLO ``data.yaml`` keys, LabelMe
    ``splits/<s>.txt``), sorted; ``None`` when it defines none (a COCO JSON, a bare folder)."""
    from rcnn_cli.data.labelme import SPLITS_DIR, is_labelme_folder
    from rcnn_cli.data.yolo import is_yolo_root, yolo_splits

    path = Path(path)
    if is_voc_root(path):
        folder = path / "ImageSets" / "Main"
        stems = {p.stem for p in folder.glob("*.txt")} if folder.is_dir() else set()
        # VOC's per-class files (aeroplane_train.txt) name a split after the last underscore.
        names = sorted(s for s in stems if not ("_" in s and s.rsplit("_", 1)[1] in stems))
        return names or None
    if is_yolo_root(path):
        return sorted(yolo_splits(path)) or None
    if is_labelme_folder(path):
        names = sorted(p.stem for p in (path / SPLITS_DIR).glob("*.txt"))
        return names or None
    return None


def training_split(path: str | Path, split: str | None) -> str | None:
    """The split a training command reads: ``split`` when given; else, on a dataset that defines
    splits, ``trainval`` or else ``train`` (said in one line; neither: a one-line error that lists
    them); ``None`` (every image, said) on a dataset without splits. Test images never train by default."""
    if split is not None:
        return split
    names = dataset_splits(path)
    if names is None:
        logger.info("%s defines no splits: training on every image (--split to choose)", path)
        return None
    chosen = next((s for s in TRAINING_SPLITS if s in names), None)
    if chosen is None:
        raise UserError(f"{path} defines the splits {', '.join(names)}: say which one to train on with --split")
    logger.info("training on split '%s' of %s (it defines %s; --split to choose)", chosen, path, ", ".join(names))
    return chosen


def load_training_dataset(path: str | Path, split: str | None, images: str | Path | None = None,
                          classes: list[str] | None = None) -> Dataset:
    """:func:`load_dataset` of the split :func:`training_split` chooses; no images is a one-line error."""
    chosen = training_split(path, split)
    ds = load_dataset(path, chosen, images, classes)
    if not ds.records:
        raise UserError(f"{path}: split '{chosen or 'all'}' has no images")
    return ds


def dataset_classes(path: str | Path, images: str | Path | None = None) -> list[str]:
    """The dataset's whole class list: every split's labels (a YOLO ``data.yaml``'s names, a COCO
    file's categories), so that a class absent from one split is still known."""
    from rcnn_cli.data.yolo import is_yolo_root

    path = Path(path)
    if is_yolo_root(path):
        from rcnn_cli.data.yolo import yolo_names

        return yolo_names(path)
    return list(load_dataset(path, None, images).classes)


def _read_list(lines: Iterable[str], base: Path | None) -> list[Path]:
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        if base is not None and not p.is_absolute() and not p.exists() and (base / p).exists():
            p = base / p
        paths.append(p)
    return paths


def _unique_ids(paths: list[Path]) -> list[ImageInput]:
    out, seen = [], {}
    for p in paths:
        image_id = p.stem
        if image_id in seen and seen[image_id] != p:
            # Two files share a stem (e.g. a/x.jpg and b/x.jpg): disambiguate with the parent path.
            image_id = str(p.with_suffix("")).replace("/", "_")
        seen.setdefault(image_id, p)
        out.append(ImageInput(image_id, p))
    return out


def resolve_inputs(items: list[str], split: str | None = None, images: str | None = None,
                   stdin: TextIO | None = None) -> list[ImageInput]:
    """Expand CLI inputs into a list of images (in order, duplicates removed).

    Each item is an image file, a folder (its images, recursively, sorted), a glob pattern, a text
    file with one path per line, ``-`` for paths on standard input, or a dataset (VOC root /
    COCO JSON) whose ``split`` images are taken. Missing paths are a :class:`UserError`.
    """
    paths: list[Path] = []
    dataset_inputs: list[ImageInput] = []
    for item in items:
        if item == "-":
            paths += _read_list((stdin or sys.stdin), None)
            continue
        p = Path(item)
        if is_dataset(p):
            ds = load_dataset(p, split, images)
            dataset_inputs += [ImageInput(r.image_id, r.path) for r in ds.records]
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise UserError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.is_file() and is_image_file(p):
            paths.append(p)
        elif p.is_file():
            paths += _read_list(p.read_text(encoding="utf-8").splitlines(), p.parent)
        elif any(c in item for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if is_image_file(Path(m)))
            if not matched:
                raise UserError(f"{item}: pattern matches no images")
            paths += matched
        else:
            raise UserError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return dataset_inputs + _unique_ids(unique)
