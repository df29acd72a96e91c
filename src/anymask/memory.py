"""Handing freed host memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def return_freed_memory() -> bool:
    """Ask glibc to return the pages of freed allocations to the system; False where it cannot (not glibc).

    glibc keeps freed heap pages for reuse. GradInit's double backward peaks near 2 GB on ResNet-20 with
    256 images and would otherwise stay resident for the whole run, and a sweep worker would hold the
    largest peak of all the runs it trained (4.4 GB measured after five recipe runs).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
