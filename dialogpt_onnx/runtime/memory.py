"""Memory the process freed, handed back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """glibc keeps what a program frees for its next allocations; building a session frees the parsed
        model (DialoGPT-small int8: 56 MB) that the process would otherwise hold until exit. Reading the
    tokenizer or hashing in threads beside the session was measured too: slower and larger (per-thread heaps)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
