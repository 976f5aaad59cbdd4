"""Let glibc keep freed memory for the numpy kernels' temporary arrays.

With glibc's defaults every large temporary array is mmapped and unmapped again
on each micro-batch, and its pages are faulted in anew every time: the window
kernel measured 2.5-3.7M readings/s like that and 12-23M with the settings below
(docs/performance.md). Set once at start-up; a no-op where glibc is absent or
the environment already chose (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """True when the settings were applied."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 32 << 20),
            (_M_TRIM_THRESHOLD, 512 << 20),
            (_M_TOP_PAD, 64 << 20),
        )
    )
