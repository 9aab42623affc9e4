"""Giving freed memory back to the operating system after an unload.

Why: CPython and onnxruntime free a model's arrays into glibc's heap, which keeps the
pages mapped for reuse; after unloading a 537 MB model an agent still held 1.07 GB
RSS, so a device looked full although nothing was loaded. A collection pass (numpy
arrays held in reference cycles go only then) followed by glibc's `malloc_trim(0)`
returns the freed pages. Large arrays live in their own mmaps and go back at once;
`malloc_trim` is for the many medium blocks in the arenas. Elsewhere (musl, macOS)
this is only the collection pass.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError as error:
        log.debug("libc not loadable: %s", error)
        return None
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return trim if callable(trim) else None


def return_free_memory() -> None:
    """Collect garbage, then hand freed heap pages back to the OS where glibc allows."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


__all__ = ["return_free_memory"]
