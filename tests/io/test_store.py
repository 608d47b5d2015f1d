"""The crash-safe per-image HDF5 store shared by proposals and features (rcnn_cli.io.store)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from rcnn_cli.errors import UserError
from rcnn_cli.io.store import ImageStore, parts_dir, published

ATTRS = {"format": "test-store", "setting": 3}


def refuse_unless(value: int):
    """A store's ``check``: refuse files whose ``setting`` is not ``value``."""
    def check(path: Path, attrs: dict) -> None:
        if attrs.get("setting") != value:
            raise UserError(f"{path}: setting {attrs.get('setting')} (now {value})")
    return check


def store(out: Path, **kw) -> ImageStore:
    return ImageStore(out, ATTRS, group="images", check=refuse_unless(3), what="test", **kw)


def values(image_id: str) -> np.ndarray:
    return np.full((2, 4), float(ord(image_id[-1])), np.float32)


def writer(image_id: str):
    return lambda group, name: group.create_dataset(name, data=values(image_id))


def read(out: Path) -> list[tuple[str, int, list]]:
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "test-store" and f.attrs["setting"] == 3
        return [(ds.attrs["image_id"], int(ds.attrs["order"]), ds[()].tolist()) for ds in f["images"].values()]


def test_parts_are_published_at_checkpoints_and_joined_in_input_order(tmp_path):
    out = tmp_path / "s.h5"
    with store(out, checkpoint_seconds=0) as s:
        for order, image_id in [(2, "c"), (0, "a"), (1, "b/x")]:  # arrive out of order; an id with a slash
            s.add(image_id, order, writer(image_id))
        assert not out.exists()
        assert sorted(p.name for p in parts_dir(out).iterdir()) == ["part-000000.h5", "part-000001.h5",
                                                                    "part-000002.h5"]
        s.finish()
    assert not parts_dir(out).exists() and not out.with_name("s.h5.lock").exists()
    assert [(i, o) for i, o, _ in read(out)] == [("a", 0), ("b/x", 1), ("c", 2)]
    assert read(out)[1][2] == values("b/x").tolist()


def test_a_kill_loses_only_the_open_part_and_the_rerun_skips_the_rest(tmp_path):
    out = tmp_path / "s.h5"
    s = store(out, checkpoint_seconds=0).__enter__()
    s.add("a", 0, writer("a"))  # published
    s.checkpoint_seconds = 1e9
    s.add("b", 1, writer("b"))  # still in the open part
    s._part.close()  # "killed": no rename, no finish
    s._unlock()
    assert [p.name for p in published(out)] == ["part-000000.h5"]
    assert len(list(parts_dir(out).glob(".part-*.tmp"))) == 1
    with store(out) as again:
        assert set(again.done) == {"a"}  # the open part's image is redone
        assert not list(parts_dir(out).glob(".part-*.tmp"))  # the stale part is gone
        again.add("b", 1, writer("b"))
        again.finish()
    assert [(i, o) for i, o, _ in read(out)] == [("a", 0), ("b", 1)]


def test_adding_to_a_finished_store_keeps_what_it_had(tmp_path):
    out = tmp_path / "s.h5"
    with store(out) as s:
        s.add("a", 0, writer("a"))
        s.finish()
    with store(out) as s:
        assert set(s.done) == {"a"}
        s.add("b", 1, writer("b"))
        s.finish()
    assert [(i, v) for i, _, v in read(out)] == [("a", values("a").tolist()), ("b", values("b").tolist())]


def test_parts_left_after_the_final_rename_are_not_counted_twice(tmp_path):
    """A kill between the rename of OUT and the removal of the parts: the rerun sees each image once."""
    out = tmp_path / "s.h5"
    with store(out, checkpoint_seconds=0) as s:
        s.add("a", 0, writer("a"))
        s.commit()
        kept = tmp_path / "kept"
        shutil.copytree(parts_dir(out), kept)
        s.finish()
    shutil.copytree(kept, parts_dir(out))
    with store(out) as s:
        assert list(s.done) == ["a"]
        s.finish()
    assert [i for i, _, _ in read(out)] == ["a"] and not parts_dir(out).exists()


def test_other_settings_and_a_second_writer_are_refused_with_nothing_touched(tmp_path):
    out = tmp_path / "s.h5"
    with store(out) as s:
        s.add("a", 0, writer("a"))
        s.finish()
    before = out.read_bytes()
    other = ImageStore(out, dict(ATTRS, setting=4), group="images", check=refuse_unless(4), what="test")
    with pytest.raises(UserError, match=r"setting 3 \(now 4\)"):
        other.__enter__()
    with store(out) as s:
        with pytest.raises(UserError, match="another test process is writing it"):
            store(out).__enter__()
    assert out.read_bytes() == before
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        store(tmp_path / "x.h5").__enter__()
    assert (tmp_path / "x.h5").read_bytes() == b"not hdf5"


def test_an_error_inside_the_block_drops_the_open_part_only(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with store(out, checkpoint_seconds=0) as s:
            s.add("a", 0, writer("a"))
            s.checkpoint_seconds = 1e9
            s.add("b", 1, writer("b"))
            raise RuntimeError("interrupted")
    assert [p.name for p in published(out)] == ["part-000000.h5"]
    assert not list(parts_dir(out).glob(".part-*.tmp")) and not out.with_name("s.h5.lock").exists()
