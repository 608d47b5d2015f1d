"""Shared fixtures: small generated data only (no network, no ../shared datasets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcnn_cli.data.shapes import make_shapes


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOC-layout shapes dataset: 8 ``trainval`` and 4 ``test`` images of 128 x 128 pixels."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=8, test=4, size=128, seed=0)


@pytest.fixture(autouse=True)
def _never_download(monkeypatch):
    """No test downloads weights: torchvision's weights API may only read what a test put in its cache."""
    monkeypatch.setenv("RCNN_OFFLINE", "1")
