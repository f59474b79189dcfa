"""Keeping freed memory in the process, so that forward passes stop paying page faults.

Every forward pass allocates the same large buffers again (a KV cache's keys and values
expanded to every query head, attention scores, logits). glibc's allocator hands blocks
above a few MB back to the system when they are freed, so the next pass touches fresh
pages and the kernel zeroes each one first; on a virtual machine with two cores that
can cost as much as the arithmetic. :func:`keep_freed_memory` raises glibc's thresholds
so that freed blocks up to 32 MB stay in the process for reuse. It changes nothing but
speed and the process' resident memory (which then shrinks only by up to 1 GB of free
memory at a time), and it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 * 2**20),  # glibc's largest allowed value on 64-bit systems
    (_M_TRIM_THRESHOLD, 2**30),
    (_M_TOP_PAD, 64 * 2**20),
)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse (module docstring);
    ``True`` if it did. The command line does this at start; call it once in a notebook."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in _SETTINGS)
