"""Limits that keep a hostile upload cheap to refuse: the size of one record, how far gzip data may
expand (in total and as a ratio), and a bounded look at the head of a file.

Owns the limit values and BoundedStream, the wrapper every reader reads the (decompressed) bytes
through. It does not parse anything; the readers turn LimitExceeded into a located, fatal problem.
"""

from __future__ import annotations

MAX_RECORD_BYTES = 4 << 20  # one line (JSON Lines, CSV, TSV) or one JSON array element
MAX_DECOMPRESSED_BYTES = 8 << 30  # gzip data may expand to at most this much
MAX_GZIP_RATIO = 100  # ... and to at most this many times its compressed size
RATIO_AFTER_BYTES = 4 << 20  # the ratio is checked once this much has been decompressed
HEAD_CHECK_BYTES = 2 * MAX_RECORD_BYTES  # what a head check reads (decompressed) before it stops


def mib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


class LimitExceeded(Exception):
    """The input breaks one of the limits above; `line` says where when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class HeadDone(Exception):
    """A head check read all it wanted (BoundedStream(head_bytes=...))."""


def record_too_large(what: str, hint: str = "split it, or use JSON Lines (one example per line)") -> str:
    return f"{what} is larger than {mib(MAX_RECORD_BYTES)}, the limit for one example; {hint}"


class BoundedStream:
    """Reads `inner` (a binary stream), counting what comes out. With `raw` (the compressed file under a
    gzip stream) it raises LimitExceeded when the output passes MAX_DECOMPRESSED_BYTES or expands more
    than MAX_GZIP_RATIO times; with head_bytes it raises HeadDone once that much has been read."""

    def __init__(self, inner, raw=None, head_bytes: int | None = None) -> None:
        self.inner, self.raw, self.head_bytes = inner, raw, head_bytes
        self.out = 0

    def _count(self, data: bytes) -> bytes:
        self.out += len(data)
        if self.raw is not None:
            if self.out > MAX_DECOMPRESSED_BYTES:
                raise LimitExceeded(f"the gzip data expands to more than {mib(MAX_DECOMPRESSED_BYTES)}")
            packed = max(self.raw.tell(), 1)
            if self.out > RATIO_AFTER_BYTES and self.out > MAX_GZIP_RATIO * packed:
                raise LimitExceeded(
                    f"the gzip data expands more than {MAX_GZIP_RATIO} times (the first {packed} compressed "
                    f"bytes gave {self.out} bytes): refused as a likely decompression bomb"
                )
        if self.head_bytes is not None and self.out > self.head_bytes:
            raise HeadDone
        return data

    def read(self, n: int = -1) -> bytes:
        return self._count(self.inner.read(n))

    def readline(self, limit: int = -1) -> bytes:
        return self._count(self.inner.readline(limit))

    def __iter__(self):
        while line := self.readline():
            yield line
