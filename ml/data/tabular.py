"""Streaming CSV and TSV readers that turn rows into dicts keyed by column name.

CSV follows RFC 4180 (quoted fields may hold commas and newlines) and needs a header row. TSV has no
quoting (as FLAN's files): a field never holds a tab or newline, and a literal backslash-n inside a
field means a newline. A TSV without a header is read with the caller's default columns (FLAN CoT:
question, answer, rationale). Which columns mean what is the formats' business, not this module's.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator

from ml.data.limits import MAX_RECORD_BYTES, LimitExceeded, record_too_large
from ml.data.report import Problem
from ml.data.text_lines import RawItem, decode_line

csv.field_size_limit(min(sys.maxsize, MAX_RECORD_BYTES))  # the default 128 KB refuses long answers
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .\-]{0,63}$")


def _looks_like_header(cells: list[str], known: frozenset[str]) -> bool:
    names = [c.strip() for c in cells]
    return any(n in known for n in names) and all(_NAME.match(n) for n in names if n)


def _decoded_lines(stream, problems: list[Problem]) -> Iterator[str]:
    n = 0
    while raw := stream.readline(MAX_RECORD_BYTES + 1):
        n += 1
        if len(raw) > MAX_RECORD_BYTES:
            raise LimitExceeded(record_too_large("the line"), n)
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text, bad = decode_line(raw)
        if bad:
            problems.append(Problem(n, None, None, bad))
            text = "\n"
        yield text


def read_tsv(
    stream, known_columns: frozenset[str], default_columns: tuple[str, ...] | None
) -> Iterator[RawItem]:
    problems: list[Problem] = []
    columns: list[str] | None = None
    for n, text in enumerate(_decoded_lines(stream, problems), start=1):
        while problems:
            yield RawItem(None, problems[0].line, None, problems.pop(0))
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        cells = text.split("\t")
        if columns is None:
            if _looks_like_header(cells, known_columns):
                columns = [c.strip() for c in cells]
                continue
            if default_columns is None or len(cells) != len(default_columns):
                want = ", ".join(default_columns or ())
                msg = (
                    f"a TSV file without a header row must have {len(default_columns or ())} columns "
                    f"({want}) as in FLAN CoT, but this line has {len(cells)}; otherwise start the file "
                    "with a header row naming the columns (e.g. prompt<TAB>completion)"
                )
                yield RawItem(None, n, None, Problem(n, None, None, msg), fatal=True)
                return
            columns = list(default_columns)
        if len(cells) != len(columns):
            msg = f"has {len(cells)} tab-separated columns, expected {len(columns)} ({', '.join(columns)})"
            yield RawItem(None, n, None, Problem(n, None, None, msg))
            continue
        yield RawItem({k: v.replace("\\n", "\n") for k, v in zip(columns, cells)}, n, None)


def read_csv(stream, known_columns: frozenset[str]) -> Iterator[RawItem]:
    problems: list[Problem] = []
    reader = csv.reader(_decoded_lines(stream, problems))
    columns: list[str] | None = None
    prev_end = 0
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            line = reader.line_num
            yield RawItem(None, line, None, Problem(line, None, None, f"invalid CSV ({e})"), fatal=True)
            return
        while problems:
            yield RawItem(None, problems[0].line, None, problems.pop(0))
        if cells is None:
            return
        start, prev_end = prev_end + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if columns is None:
            if not _looks_like_header(cells, known_columns):
                msg = (
                    "a CSV file needs a header row naming its columns "
                    "(e.g. prompt,completion or instruction,input,output)"
                )
                yield RawItem(None, start, None, Problem(start, None, None, msg), fatal=True)
                return
            columns = [c.strip() for c in cells]
            continue
        if len(cells) != len(columns):
            msg = f"has {len(cells)} comma-separated columns, expected {len(columns)} ({', '.join(columns)})"
            yield RawItem(None, start, None, Problem(start, None, None, msg))
            continue
        yield RawItem(dict(zip(columns, cells)), start, None)


def first_line_kind(head: str) -> str | None:
    """'tsv' or 'csv' from the first line of text, None when it is neither."""
    first = head.split("\n", 1)[0]
    if "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    return None
