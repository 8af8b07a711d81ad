"""chatforge.malloc on this machine's glibc: memory freed inside the heap stays resident until trim()
gives it back, which is what keeps the API's resident memory flat under sustained serving."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def test_trim_returns_freed_heap_memory_to_the_system():
    # in a fresh interpreter: 40,000 blocks of 4 KiB (heap, below the mmap threshold) freed out of order
    # leave the heap fragmented; RSS stays up until malloc_trim releases the free pages
    code = textwrap.dedent("""
        import ctypes
        from chatforge import malloc
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
        blocks = [libc.malloc(4096) for _ in range(40_000)]
        for b in blocks:
            ctypes.memset(b, 1, 4096)
        keep = set(blocks[::50])
        for b in blocks:
            if b not in keep:
                libc.free(b)
        before = rss()
        released = malloc.trim()
        print(before, rss(), released, malloc.tune())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, released, tuned = out.split()
    assert released == "True" and tuned == "True", out
    assert int(before) - int(after) >= 100, out  # of ~156 MiB written, nearly all of it back


def test_the_primitive_caches_are_bounded_unless_the_environment_says_otherwise():
    code = textwrap.dedent("""
        import os
        from chatforge import malloc
        os.environ["LRU_CACHE_CAPACITY"] = "2048"  # an operator's own setting
        print(malloc.bound_kernel_caches())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == str({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "2048"})
