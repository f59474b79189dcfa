"""The allocator setting the command line applies at start."""

from __future__ import annotations

import sys

import fasb_lens
from fasb_lens.allocator import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_is_harmless_twice() -> None:
    applied = keep_freed_memory()
    assert applied is (sys.platform.startswith("linux") and _glibc())
    assert keep_freed_memory() is applied
    assert fasb_lens.keep_freed_memory is keep_freed_memory


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"
