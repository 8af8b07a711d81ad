"""glibc malloc settings for the long-running processes that allocate tensors of changing sizes.

The serving engine allocates activations, logits and key/value blocks whose sizes change with every batch.
glibc serves blocks above its mmap threshold with mmap and gives them back on free, but it raises that
threshold each time such a block is freed (up to 32 MiB), after which those buffers come from the heap,
where freed memory is kept and fragments; every thread that allocates (the engine, the API's thread pool)
also gets its own arena. Resident memory then creeps up under sustained load without any leak. Fixing
the threshold (which stops the raising) and capping the arenas keeps it flat. Set at process start, before
threads allocate; a no-op where libc is not glibc. Overridden by the MALLOC_* environment variables, which
glibc reads itself.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024  # bytes: buffers at least this large are mapped and unmapped on free
ARENA_MAX = 4


def tune() -> bool:
    """Apply the settings above to this process; True if glibc took them."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
