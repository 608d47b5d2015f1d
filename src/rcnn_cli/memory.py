"""How the process hands freed memory back to the OS (glibc ``mallopt``; a no-op elsewhere).

Two policies, each for the rest of the process (the last call wins):

* :func:`reuse_memory` for training, detection and ``extract-features``, which allocate the same
  large tensors again and again: blocks up to 32 MiB stay on the heap and up to 256 MiB of free
  heap is kept, so they are reused instead of being faulted in afresh on every call. glibc's
  default (a dynamic threshold) gave R-CNN detection about 600,000 page faults per 13 images on
  the CPU and a time per image that varied 1.3-1.7x between processes; with this policy none and
  15-30% faster. ``extract-features`` also calls :func:`release_memory` after each image, so its
  RSS stays flat however many images pass (``scripts/bench_features.py``).
* :func:`flat_memory`: blocks of 4 MiB and more are ``mmap``-ed and returned to the OS on free.
  The smallest footprint, but every large allocation is faulted in afresh: on 8 BCCD images at
  64-pixel warps ``extract-features`` spent 12 s in the kernel (4.4 million page faults) against
  1 s with :func:`reuse_memory`, and ran 15-25% slower.
"""

from __future__ import annotations

from typing import Any

__all__ = ["flat_memory", "reuse_memory", "release_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim, _LIBC.mallopt  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def flat_memory() -> None:
    """Serve allocations of 4 MiB and more with ``mmap`` (returned to the OS on free)."""
    libc = _libc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)  # fixing it also disables glibc's dynamic rule
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)  # glibc's default


def reuse_memory() -> None:
    """Keep blocks up to 32 MiB (glibc's largest heap threshold) and 256 MiB of free heap for reuse."""
    libc = _libc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def release_memory() -> None:
    """Give freed heap memory back to the OS now (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
