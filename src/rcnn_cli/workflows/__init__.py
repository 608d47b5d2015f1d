"""Workflows made of named stages: ``pipeline`` (every R-CNN stage, resumable by configuration),
``compare`` (the lecture's table), with ``timing`` and ``report``."""
