"""Freed host memory goes back to the system after GradInit's peak and between sweep runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from anymask.memory import _glibc

# Runs in a fresh interpreter: the malloc settings it needs are process-wide, and how much a process
# frees on its own depends on its heap's history (the CI once saw free() return part of the memory before
# the trim, so the trim had little left to give back). With automatic trimming off, only
# return_freed_memory() can return the freed heap pages, and the measurement no longer depends on luck.
MEASURE_RETURNED_MB = textwrap.dedent(
    """
    import ctypes, ctypes.util
    import torch
    from anymask.memory import return_freed_memory

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # free() never shrinks the heap by itself
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)  # 64 KB blocks come from the heap, not from mmap

    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    chunks = [torch.ones(16 * 1024) for _ in range(3000)]  # 3000 x 64 KB = 188 MB
    del chunks
    held = resident_mb()
    return_freed_memory()
    print(held - resident_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_freed_heap_pages_are_returned() -> None:
    if _glibc() is None:
        pytest.skip("not glibc")
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_RETURNED_MB], capture_output=True, text=True, check=True, timeout=300
    )
    assert float(result.stdout) > 150  # of the 188 MB freed


def test_return_freed_memory_says_whether_it_could() -> None:
    from anymask.memory import return_freed_memory

    assert return_freed_memory() is (_glibc() is not None)
