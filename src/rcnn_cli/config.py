"""Parsing of the settings that every command shares (once, here): lists of numbers and step epochs."""

from __future__ import annotations

from typing import Sequence

from rcnn_cli.errors import UserError

__all__ = ["parse_floats", "parse_steps", "parse_shard", "parse_duration", "format_duration"]


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


def parse_duration(text: str | float | None, what: str = "--time-budget") -> float | None:
    """``"90s"``, ``"20m"``, ``"2h"``, ``"1h30m"`` -> seconds; a number is seconds; ``None`` stays ``None``."""
    import re

    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not parts or not any(parts.groups()):
            raise UserError(f"{what} '{text}': expected a duration such as 90s, 20m, 2h or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise UserError(f"{what} must be positive (got '{text}')")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> ``"45s"``, ``"12m05s"``, ``"2h03m"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
