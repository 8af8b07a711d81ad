"""Streaming reader for a JSON array of records: one element at a time, never the whole file.

Owns the sliding text buffer over json.JSONDecoder.raw_decode, with line/column bookkeeping so
problems say "record 4 (line 37)". After a syntax error the array structure is lost, so reading stops
there (with the error located). It does not interpret the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ml.data.limits import MAX_RECORD_BYTES, record_too_large
from ml.data.report import Problem
from ml.data.text_lines import ChunkDecoder, RawItem, iter_chunks

_WS = json.decoder.WHITESPACE  # the regex json itself uses to skip whitespace
CHUNK_BYTES = 1 << 20
MAX_RECORD_CHARS = MAX_RECORD_BYTES  # one record larger than this is refused rather than buffered
_NEAR_END = 64  # a parse failure this close to the buffer end may just mean "read more"
COMPACT_AT = 1 << 20  # drop consumed text from the buffer once this much has accumulated


class _Buffer:
    def __init__(self, stream):
        self._chunks = iter_chunks(stream, CHUNK_BYTES)
        self._decoder = ChunkDecoder()
        self.text = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number at self.pos
        self._col_base = 0  # characters on the current line before text[0]

    @property
    def problems(self) -> list[Problem]:
        return self._decoder.problems

    def fill(self) -> bool:
        """Append the next chunk; False at end of input."""
        if self.eof:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self.eof = True
            tail = self._decoder.decode(b"", final=True)
            self.text += tail
            return bool(tail)
        if self.pos > COMPACT_AT:  # drop what has been consumed, keeping the bookkeeping right
            dropped = self.text[: self.pos]
            nl = dropped.rfind("\n")
            self._col_base = self._col_base + len(dropped) if nl < 0 else len(dropped) - nl - 1
            self.text = self.text[self.pos :]
            self.pos = 0
        self.text += self._decoder.decode(chunk)
        return True

    def advance(self, new_pos: int) -> None:
        self.line += self.text.count("\n", self.pos, new_pos)
        self.pos = new_pos

    def skip_ws(self) -> None:
        while True:
            end = _WS.match(self.text, self.pos).end()
            self.advance(end)
            if self.pos < len(self.text) or not self.fill():
                return

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def locate(self, p: int) -> tuple[int, int]:
        """(line, column) of text offset p >= self.pos."""
        line = self.line + self.text.count("\n", self.pos, p)
        nl = self.text.rfind("\n", 0, p)
        col = self._col_base + p + 1 if nl < 0 else p - nl
        return line, col


def _error(buf: _Buffer, record: int | None, p: int, template: str) -> RawItem:
    """A fatal problem at text offset p; `template` may use {col}."""
    line, col = buf.locate(p)
    return RawItem(None, line, record, Problem(line, record, None, template.format(col=col)), fatal=True)


def read_json_array(stream) -> Iterator[RawItem]:
    """Yield each element of the top-level array as a RawItem (record numbers start at 1)."""
    decoder = json.JSONDecoder()
    buf = _Buffer(stream)
    reported = 0

    def flush_decode_problems() -> Iterator[RawItem]:
        nonlocal reported
        while reported < len(buf.problems):
            p = buf.problems[reported]
            reported += 1
            yield RawItem(None, p.line, None, p)

    if buf.peek() != "[":
        yield _error(buf, None, buf.pos, "expected a JSON array of records starting with '[' (column {col})")
        return
    buf.advance(buf.pos + 1)
    record = 0
    while True:
        c = buf.peek()
        yield from flush_decode_problems()
        if c == "]":
            if record == 0:
                return  # an empty array; the caller reports "no records"
            break
        if c == "":
            yield _error(
                buf, None, buf.pos, "invalid JSON: the file ends before the array is closed with ']'"
            )
            return
        if record > 0:
            if c != ",":
                yield _error(
                    buf,
                    record + 1,
                    buf.pos,
                    "invalid JSON (expected ',' or ']' after the previous record, column {col})",
                )
                return
            buf.advance(buf.pos + 1)
            if buf.peek() == "]":
                yield _error(
                    buf, None, buf.pos, "invalid JSON (trailing comma after the last record, column {col})"
                )
                return
        record += 1
        start_line = buf.line
        while True:
            try:
                value, end = decoder.raw_decode(buf.text, buf.pos)
                break
            except RecursionError:
                yield _error(buf, record, buf.pos, "invalid JSON: arrays or objects nested too deeply "
                             "(hundreds of levels) in this record, which starts at column {col}")
                return
            except json.JSONDecodeError as e:
                near_end = e.pos >= len(buf.text) - _NEAR_END or e.msg.startswith("Unterminated string")
                if near_end and not buf.eof:
                    if len(buf.text) - buf.pos > MAX_RECORD_CHARS:
                        yield _error(buf, record, buf.pos, record_too_large(
                            "the record", "is a string in it never closed? split long records"))
                        return
                    buf.fill()
                    continue
                yield from flush_decode_problems()
                yield _error(
                    buf,
                    record,
                    e.pos,
                    "invalid JSON (" + e.msg.replace("{", "{{").replace("}", "}}") + ", column {col})",
                )
                return
        buf.advance(end)
        yield from flush_decode_problems()
        yield RawItem(value, start_line, record)
    # after the closing bracket only whitespace may follow
    buf.advance(buf.pos + 1)
    c = buf.peek()
    yield from flush_decode_problems()
    if c:
        yield _error(buf, None, buf.pos, "invalid JSON (extra data after the closing ']', column {col})")
