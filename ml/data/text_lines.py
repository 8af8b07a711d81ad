"""Turning raw bytes into text safely: strict UTF-8 with located complaints, and the raw item type.

Owns RawItem (one record-or-problem read from a source) and the byte-level checks shared by every
reader: undecodable UTF-8 and NUL bytes, reported with a column so users can find them. It does not
know about JSON, CSV or record formats.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ml.data.report import Problem

MISSING = object()
LAZY = object()  # RawItem.value of a JSON Lines item not parsed yet (see ml.data.sources.parse_line)


@dataclass(slots=True)
class RawItem:
    """One record as read from the source (value), or a problem found while reading it."""

    value: Any
    line: int | None
    record: int | None
    problem: Problem | None = None
    fatal: bool = False  # reading cannot go on after this problem
    raw: bytes | None = None  # the line's bytes while value is LAZY


def bad_utf8_message(raw: bytes, start: int, col_base: int = 0) -> str:
    """col_base: characters already on this line before raw[0] (for chunked decoding)."""
    nl = raw.rfind(b"\n", 0, start)
    col = len(raw[nl + 1 : start].decode("utf-8", "replace")) + 1 + (col_base if nl < 0 else 0)
    return f"not valid UTF-8 text (byte 0x{raw[start]:02x} at column {col}); save the file as UTF-8"


def decode_line(raw: bytes) -> tuple[str, str | None]:
    """Decode one line strictly. Returns (text, problem message or None); bad bytes become U+FFFD."""
    if b"\x00" in raw:
        col = raw.index(b"\x00") + 1
        return "", f"contains a NUL byte (column {col}): this looks like binary data, not text"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", "replace"), bad_utf8_message(raw, e.start)


class ChunkDecoder:
    """Incremental strict UTF-8 decoding of a byte stream that reports each bad byte's line.

    Bad bytes are replaced by U+FFFD so reading can continue and find later problems too.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.lines_before = 0  # newlines in all bytes fully handed out so far
        self._tail_chars = 0  # characters after the last newline handed out so far
        self.problems: list[Problem] = []

    def _emit(self, out: list[str], text: str) -> None:
        out.append(text)
        nl = text.rfind("\n")
        self._tail_chars = len(text) - nl - 1 if nl >= 0 else self._tail_chars + len(text)

    def decode(self, chunk: bytes, final: bool = False) -> str:
        pending = self._decoder.getstate()[0]
        data = pending + chunk
        self._decoder.reset()
        out: list[str] = []
        while True:
            try:
                self._emit(out, self._decoder.decode(data, final))
                break
            except UnicodeDecodeError as e:
                good = data[: e.start]
                line = self.lines_before + good.count(b"\n") + 1
                msg = bad_utf8_message(data, e.start, self._tail_chars)
                self.problems.append(Problem(line, None, None, msg))
                self._emit(out, good.decode("utf-8"))
                self._emit(out, "\ufffd")
                self.lines_before += data[: e.end].count(b"\n")
                data = data[e.end :]
                self._decoder.reset()
        consumed = len(data) - len(self._decoder.getstate()[0])
        self.lines_before += data[:consumed].count(b"\n")
        return "".join(out)


def iter_chunks(stream, size: int = 1 << 20) -> Iterator[bytes]:
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk
