"""The process memory policies: reuse keeps freed blocks on the heap, flat returns them."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

# Run in a fresh interpreter: a heap already holding large free blocks serves them under either policy.
CHILD = """
import resource, sys
import numpy as np
from rcnn_cli import memory
getattr(memory, sys.argv[1])()
np.ones(16 << 18, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    a = np.ones(16 << 18, np.float32)  # 16 MiB, allocated and freed
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(policy: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, policy], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_reuse_keeps_freed_blocks_and_flat_returns_them():
    flat, reuse = _page_faults("flat_memory"), _page_faults("reuse_memory")
    assert flat >= 5  # every 16 MiB allocation is a fresh mmap: at least one page fault each
    assert reuse <= flat // 5  # the freed heap block is reused (0 faults here)
