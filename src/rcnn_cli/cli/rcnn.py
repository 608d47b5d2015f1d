"""CLI commands: rcnn (see the library module of the same responsibility)."""

from rcnn_cli.cli.app import app  # noqa: F401
