"""glibc malloc settings for the API process, whose serving engines allocate tensors of changing sizes.

Each thread that allocates (an engine, the API's thread pool) gets its own glibc arena, and memory freed
inside an arena stays with the process: under sustained load with prompts and batches of every size,
resident memory creeps up while nothing leaks. Two remedies, both cheap: cap the arenas (`tune`, at
process start, before threads allocate) and give free pages back to the system now and then (`trim`,
malloc_trim(0), which the API runs every CHATFORGE_MALLOC_TRIM_SECONDS). Fixing the mmap threshold instead,
so that big buffers are unmapped on free, was measured and rejected: the engine's per-step buffers then
cost a fresh mapping and page faults every step, and decoding slowed down many times over.
No-ops where libc is not glibc. The MALLOC_ARENA_MAX environment variable, if set, wins (glibc reads it).
The last part of the growth was not malloc's: oneDNN's primitive caches, bounded by `bound_kernel_caches`.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8
ARENA_MAX = 2


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Cap this process's malloc arenas; True if glibc took the setting."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENA_MAX))


# oneDNN, and PyTorch's cache in front of it, keep a compiled primitive (with its buffers) per operation shape,
# 1,024 of each by default. Serving prompts of every length makes a new shape per prefill length, so under
# sustained load the caches fill for many minutes and hold hundreds of MB. 256 keeps every decode shape and
# the recent prefill ones: measured flat resident memory at the same decode speed (docs/benchmarks.md).
PRIMITIVE_CACHE_CAPACITY = 256
_PRIMITIVE_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int = PRIMITIVE_CACHE_CAPACITY) -> dict[str, str]:
    """Default oneDNN's and PyTorch's primitive cache capacities for this process (both read at their first
    use, so call it before the first model runs); values already in the environment win. Returns them."""
    for name in _PRIMITIVE_CACHES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in _PRIMITIVE_CACHES}


def trim() -> bool:
    """Return free heap memory to the system (malloc_trim(0)); True if some was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
