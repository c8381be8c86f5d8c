"""Handing freed heap memory back to the system (glibc; elsewhere there is nothing to do).

glibc keeps the pages of freed allocations in its arenas for the next ones. After the
few moments that free a lot at once (loading a model reads full-precision weights and
frees them once packed or quantized; start-up builds tables it drops; a 10 MB prompt
tokenizes into a large temporary), a pod would otherwise stay resident at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_freed_heap() -> None:
    """Return the heap's free pages to the system."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
