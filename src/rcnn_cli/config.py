"""Parsing of the settings that every command shares (once, here): lists of numbers and step epochs."""

from __future__ import annotations

from typing import Sequence

from rcnn_cli.errors import UserError

__all__ = ["parse_floats", "parse_steps", "parse_shard"]


def parse_floats(text: str | Sequence[float] | None, what: str) -> list[float] | None:
    """``"128,256,512"`` -> ``[128.0, 256.0, 512.0]``; ``None`` stays ``None``; bad text is a UserError."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [float(v) for v in text]
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got '{text}'") from None
    if not values:
        raise UserError(f"{what}: expected comma-separated numbers, got '{text}'")
    return values


def parse_steps(text: str | Sequence[int] | None, what: str = "--lr-steps") -> tuple[int, ...] | None:
    """``"8,11"`` or ``"8 11"`` -> ``(8, 11)`` (epochs); ``None`` stays ``None`` (the default schedule)."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise UserError(f"{what} '{text}': expected epoch numbers such as '8,11' or '8 11'") from None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; ``None`` -> ``None``."""
    if text in (None, ""):
        return None
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: need 0 <= K < N")
    return k, n
