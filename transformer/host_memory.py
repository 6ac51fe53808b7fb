"""Keeps freed host memory in the process, so XLA:CPU does not pay page faults every step.

XLA:CPU allocates each step's scratch space as one block (~260 MiB for the ``small`` model
at 16 rows of 64 + 64 tokens). glibc's malloc serves a block that large with a fresh
``mmap`` and returns it to the kernel on ``free``; the next step touches it again, page by
page, and the kernel zeroes every page: ~71,000 minor page faults and ~20% of the step's
CPU time spent in the kernel. Serving large blocks from the heap, in one arena, and never
trimming it lets every step reuse the previous step's pages (``make bench
CASES=train_small_float32`` times the step both ways).

Set ``TRANSFORMER_MALLOC_DEFAULTS=1`` to keep glibc's defaults. Elsewhere than glibc
(macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
OPT_OUT = 'TRANSFORMER_MALLOC_DEFAULTS'


def keep_freed_memory() -> bool:
    """Large blocks from the heap (no mmap), one arena, no trimming; True if applied.

    Must run before other threads allocate (before JAX starts its thread pools), which is why
    the entry points call it before their other imports. A notebook may call it first too;
    importing the library changes nothing.
    """
    if os.environ.get(OPT_OUT, '') not in ('', '0'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # 2**31 - 1 bytes: glibc keeps the top of the heap until that much is free.
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 2**31 - 1)))
