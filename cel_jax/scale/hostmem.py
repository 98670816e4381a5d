"""Give freed host memory back to the OS between the parts of a run.

On the CPU backend XLA's buffers are glibc heap blocks: once a stage's arrays are dropped (the fine-tuning
stage before unlearning, the KV caches of the before/after answers) glibc keeps the pages in its arenas
and the process's RSS stays at the stage's peak. `release` collects Python garbage, optionally drops
JAX's compiled programs, and asks glibc to return free pages (`malloc_trim`; a no-op elsewhere).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl: nothing to trim)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release(clear_compiled: bool = False) -> None:
    gc.collect()
    if clear_compiled:
        import jax

        jax.clear_caches()
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
