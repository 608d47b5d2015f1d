"""Names in the HDF5 stores (proposals, features): image ids as link names, reversibly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["escape_id", "unescape_id", "attr_value", "h5_attr", "StoreReader"]


def escape_id(image_id: str) -> str:
    """HDF5 link name for an image id: ``%`` -> ``%25``, ``/`` -> ``%2F``, a lone ``.`` -> ``%2E``."""
    name = image_id.replace("%", "%25").replace("/", "%2F")
    return "%2E" if name == "." else name


def unescape_id(name: str) -> str:
    """Inverse of :func:`escape_id` (also of the older rule that escaped every ``.``)."""
    return name.replace("%2E", ".").replace("%2F", "/").replace("%25", "%") if "%" in name else name


def attr_value(v: Any) -> Any:
    """An HDF5 attribute as a plain Python value (bytes -> str, numpy scalars and arrays -> numbers, lists)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def h5_attr(v: Any) -> Any:
    """A value HDF5 can hold as an attribute (the inverse of :func:`attr_value`): ``None`` -> ``""``,
    lists and dicts -> JSON, paths -> str."""
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, Path):
        return str(v)
    return v


class StoreReader:
    """Base of the HDF5 store readers (proposals, features): ``close()`` and use as a context manager."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
