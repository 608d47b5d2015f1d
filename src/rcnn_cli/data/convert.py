"""``rcnn data convert``: Pascal VOC, COCO instances JSON, YOLO and LabelMe into VOC, COCO or YOLO.

Without ``--split`` every split of the source becomes a split of the target (VOC
``ImageSets/Main/<s>.txt``; YOLO ``images/<s>`` folders and ``data.yaml`` keys; COCO one
``<stem>_<s>.json`` per split); with it, that split alone. The target is always new: an output that
is the source, or a folder or file that already exists with content, is refused before anything is
written, and images that cannot be found are counted (none found at all: refused).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

from rcnn_cli.boxes import to_yolo_boxes
from rcnn_cli.data.dataset import Dataset
from rcnn_cli.data.images import image_size
from rcnn_cli.errors import ImageError, UserError
from rcnn_cli.io import atomic_open, write_json
from rcnn_cli.log import logger

__all__ = ["convert_dataset", "source_splits", "to_coco", "to_voc", "to_yolo", "yolo_layout"]

#: Where images that belong to no split go in a YOLO target (not a split of its ``data.yaml``).
UNASSIGNED = "unassigned"


def _size(rec) -> tuple[int | None, int | None]:
    if rec.width is not None:
        return rec.width, rec.height
    try:
        return image_size(rec.path)
    except ImageError:
        return None, None


# --------------------------------------------------------------------------- COCO


def to_coco(ds: Dataset, out: str | Path) -> Path:
    """Write ``ds`` as COCO instances JSON (``bbox = [x, y, w, h]``); ``file_name`` is the image's
    file name (pass the image folder as ``--images`` when reading back)."""
    out = Path(out)
    images, annotations = [], []
    categories = [{"id": ds.category_ids[c], "name": c, "supercategory": "object"} for c in ds.classes]
    ann_id = 1
    for image_index, rec in enumerate(ds.records, start=1):
        width, height = _size(rec)
        coco_id = rec.coco_id if rec.coco_id is not None else image_index
        images.append({"id": coco_id, "file_name": rec.path.name, "width": width, "height": height})
        for box, label, difficult in zip(rec.boxes, rec.labels, rec.difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": ann_id, "image_id": coco_id, "category_id": ds.category_ids[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": max(x2 - x1, 0.0) * max(y2 - y1, 0.0),
                "iscrowd": int(bool(difficult)),
            })
            ann_id += 1
    write_json(out, {"images": images, "annotations": annotations, "categories": categories}, indent=None)
    return out


# --------------------------------------------------------------------------- VOC


def _xml(rec, width, height) -> str:
    lines = ["<annotation>", f"  <filename>{escape(rec.path.name)}</filename>"]
    if width is not None:
        lines.append(f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for box, label, difficult, truncated in zip(rec.boxes, rec.labels, rec.difficult, rec.truncated):
        x1, y1, x2, y2 = (f"{float(v):g}" for v in box)
        lines += ["  <object>", f"    <name>{escape(label)}</name>", f"    <truncated>{int(truncated)}</truncated>",
                  f"    <difficult>{int(difficult)}</difficult>",
                  f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                  "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _copy(source: Path, target: Path) -> None:
    if source.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def to_voc(ds: Dataset, out: str | Path, split: str | None = "all", copy_images: bool = True,
           splits: dict[str, list[str]] | None = None) -> Path:
    """Write ``ds`` in VOC layout under ``out``: an annotation per image, the images copied, and a
    split file ``ImageSets/Main/<name>.txt`` per entry of ``splits`` (default ``{split: every
    image}``; ``split=None``: no split file)."""
    out = Path(out)
    if splits is None:
        splits = {split: [r.image_id for r in ds.records]} if split else {}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for rec in ds.records:
        if "/" in rec.image_id or rec.image_id in ("", ".", ".."):
            raise UserError(f"image id {rec.image_id!r} cannot be a VOC file name")
        width, height = _size(rec)
        if copy_images:
            _copy(rec.path, out / "JPEGImages" / rec.path.name)
        with atomic_open(out / "Annotations" / f"{rec.image_id}.xml") as f:
            f.write(_xml(rec, width, height))
    for name, ids in splits.items():
        with atomic_open(out / "ImageSets" / "Main" / f"{name}.txt") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return out


# --------------------------------------------------------------------------- YOLO


def _label_lines(rec, width: int, height: int, index: dict[str, int]) -> list[str]:
    return [f"{index[lab]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
            for (cx, cy, w, h), lab in zip(to_yolo_boxes(rec.boxes, width, height), rec.labels)]


def yolo_layout(splits: dict[str, list[str]]) -> tuple[dict[str, str], dict[str, list[str] | str]]:
    """Where each image goes in a YOLO target and what each split key says.

    Disjoint splits (smallest first) get a folder ``images/<s>`` each; a split that is the union of
    such folders (VOC's ``trainval``) names them as a list; any other split is a list file
    ``splits/<s>.txt``. Returns ``({image id: folder name}, {split: data.yaml entry})``; images in
    no folder split go to ``images/unassigned``.
    """
    folders: dict[str, str] = {}
    base: list[str] = []
    for name in sorted(splits, key=lambda s: (len(splits[s]), s)):
        if not any(i in folders for i in splits[name]):
            folders.update(dict.fromkeys(splits[name], name))
            base.append(name)
    entries: dict[str, list[str] | str] = {}
    for name, ids in splits.items():
        if name in base:
            entries[name] = f"images/{name}"
            continue
        parts = sorted(b for b in base if set(splits[b]) <= set(ids))
        union = set().union(*(splits[b] for b in parts)) if parts else set()
        entries[name] = [f"images/{b}" for b in parts] if union == set(ids) else f"splits/{name}.txt"
    return folders, entries


def to_yolo(ds: Dataset, out: str | os.PathLike, split: str = "train",
            splits: dict[str, list[str]] | None = None) -> Path:
    """Write ``ds`` as a YOLO dataset in ``out``: ``images/<folder>/``, ``labels/<folder>/`` and
    ``data.yaml`` (folders and keys from :func:`yolo_layout` of ``splits``, default ``{split: every
    image}``)."""
    import yaml

    out = Path(out)
    splits = splits if splits is not None else {split: [r.image_id for r in ds.records]}
    folders, entries = yolo_layout(splits)
    index = {c: i for i, c in enumerate(ds.classes)}
    where: dict[str, Path] = {}
    for rec in ds.records:
        width, height = rec.width, rec.height
        if width is None:
            width, height = image_size(rec.path)
        target = out / "images" / folders.get(rec.image_id, UNASSIGNED) / rec.path.name
        where[rec.image_id] = target
        _copy(rec.path, target)
        label = out / "labels" / target.parent.name / f"{target.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(label) as f:
            f.writelines(_label_lines(rec, width, height, index))
    for name, entry in entries.items():
        if isinstance(entry, str) and entry.startswith("splits/"):
            with atomic_open(out / entry) as f:
                f.write("".join(f"{where[i].relative_to(out)}\n" for i in splits[name] if i in where))
    with atomic_open(out / "data.yaml") as f:
        yaml.safe_dump({"path": ".", "names": list(ds.classes), **entries}, f, sort_keys=False)
    return out


# --------------------------------------------------------------------------- the command


def source_splits(path: str | Path, images: str | Path | None = None) -> dict[str, list[str]] | None:
    """``{split: image ids}`` of every split the dataset at ``path`` defines; ``None`` when it has none."""
    from rcnn_cli.data.inputs import dataset_splits, load_dataset

    names = dataset_splits(path)
    if not names:
        return None
    return {s: [r.image_id for r in load_dataset(path, s, images).records] for s in names}


def _source_root(path: Path) -> Path:
    return (path.parent if path.is_file() else path).resolve()


def check_target(source: Path, out: Path, to: str) -> None:
    """Refuse an output that is the source or already holds files (nothing written)."""
    target = out.resolve()
    if target in (source.resolve(), _source_root(source)):
        raise UserError(f"--out {out} is (or holds) the source dataset {source}: choose a new folder; nothing was written")
    if to == "coco" and target.exists():
        raise UserError(f"--out {out} already exists: choose a new file name; nothing was written")
    if to != "coco" and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--out {out} already holds files: choose a new or empty folder; nothing was written")


def _check_images(ds: Dataset) -> None:
    missing = [r for r in ds.records if not r.path.is_file()]
    if ds.records and len(missing) == len(ds.records):
        raise UserError(f"none of the {len(ds.records)} images was found (e.g. {missing[0].path}): give the image "
                        "folder with --images; nothing was written")
    if missing:
        logger.warning("%d of %d images not found (e.g. %s): their annotations are written without them",
                       len(missing), len(ds.records), missing[0].path)


def _coco_targets(out: Path, splits: dict[str, list[str]] | None) -> dict[str, Path]:
    if not splits:
        return {"": out}
    return {s: out.with_name(f"{out.stem}_{s}{out.suffix or '.json'}") for s in splits}


def convert_dataset(source: str | Path, out: str | Path, to: str, split: str | None = None,
                    images: str | Path | None = None, classes: list[str] | None = None) -> dict[str, object]:
    """Convert the dataset at ``source`` to ``to`` (coco, voc, yolo) at ``out`` (see the module
    docstring). Returns ``{"images", "splits": {name: count}, "written": [paths]}``."""
    from rcnn_cli.data.inputs import load_dataset

    if to not in ("coco", "voc", "yolo"):
        raise UserError(f"--to must be coco, voc or yolo, not {to!r}")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise UserError(f"{source}: dataset not found")
    splits = None if split else source_splits(source, images)
    ds = load_dataset(source, split, images, classes)
    seen: set[str] = set()
    twice = next((r.image_id for r in ds.records if r.image_id in seen or seen.add(r.image_id)), None)
    if twice is not None:
        raise UserError(f"{source}: two images share the id '{twice}' (file stem): rename one; nothing was written")
    if splits is not None:
        in_splits = {i for ids in splits.values() for i in ids}
        outside = sum(r.image_id not in in_splits for r in ds.records)
        if outside:
            logger.warning("%d images are in no split: written without one%s", outside,
                           f" (under images/{UNASSIGNED})" if to == "yolo" else "")
    elif split:
        splits = {split: [r.image_id for r in ds.records]}
    targets = _coco_targets(out, None if split else splits) if to == "coco" else {"": out}
    for target in targets.values():
        check_target(source, target, to)
    _check_images(ds)
    if to == "coco":
        by_id = ds.by_id()
        for name, target in targets.items():
            ids = splits[name] if name else [r.image_id for r in ds.records]
            to_coco(_subset(ds, [by_id[i] for i in ids if i in by_id]), target)
    elif to == "voc":
        to_voc(ds, out, split=None, splits=splits or {})
    else:
        to_yolo(ds, out, splits=splits or {"train": [r.image_id for r in ds.records]})
    counts = {name: len(ids) for name, ids in (splits or {}).items()}
    return {"images": len(ds), "splits": counts, "written": [str(t) for t in targets.values()]}


def _subset(ds: Dataset, records: list) -> Dataset:
    return Dataset(ds.root, ds.split, list(ds.classes), records, ds.format, dict(ds.category_ids))
