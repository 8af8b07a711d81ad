"""Where raw records come from: an uploaded file (sniffed by content) or an iterable of row dicts.

Owns container detection from the bytes themselves (gzip by magic number; JSON array, JSON Lines,
CSV or TSV by the first characters; binary, UTF-16, zip and Parquet refused with a clear message) and
hands out a re-openable stream of RawItems. Record formats are decided later, in ml.data.pipeline.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ml.data.json_array import read_json_array
from ml.data.report import Problem
from ml.data.tabular import first_line_kind, read_csv, read_tsv
from ml.data.text_lines import LAZY, RawItem, decode_line

GZIP_MAGIC = b"\x1f\x8b"
HEAD_BYTES = 64 * 1024
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


@dataclass
class Source:
    """A re-openable stream of RawItems plus what the container turned out to be."""

    container: str | None  # "jsonl" | "json" | "csv" | "tsv" | "rows"; None when unreadable
    compressed: bool
    open_items: Callable[[], Iterator[RawItem]]
    reopenable: bool = True


def _open_binary(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _fatal(message: str, line: int | None = None) -> Iterator[RawItem]:
    yield RawItem(None, line, None, Problem(line, None, None, message), fatal=True)


def _sniff(head: bytes) -> tuple[str | None, str | None]:
    """(container, refusal message) from the first bytes of the (decompressed) content."""
    if not head.strip():
        return None, "the file is empty"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, "the file is UTF-16 encoded; save it as UTF-8"
    if head.startswith(b"PK\x03\x04"):
        return (
            None,
            "zip archives are not supported; upload the .jsonl, .json, .csv or .tsv file (or gzip it)",
        )
    if head.startswith(b"PAR1"):
        return (
            None,
            "Parquet files are not supported as uploads; use JSON Lines, or import it as a hub dataset",
        )
    if b"\x00" in head:
        at = head.index(b"\x00")
        return None, (
            f"the file is binary (NUL byte at offset {at}), not text; upload JSON, JSON Lines, CSV or TSV "
            "(optionally gzip-compressed)"
        )
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return "json", None
    if text.startswith(b"{"):
        return "jsonl", None
    kind = first_line_kind(text.decode("utf-8", "replace"))
    if kind:
        return kind, None
    return None, (
        "unrecognised content: expected a JSON array, JSON Lines (one JSON object per line), "
        "CSV with a header row, or TSV"
    )


def _read_jsonl(stream) -> Iterator[RawItem]:
    """Lines as LAZY items: the validation pass parses each one (parse_line) or takes a fast path."""
    for n, raw in enumerate(stream, start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.isspace() or not raw:
            continue
        yield RawItem(LAZY, n, None, raw=raw)


def parse_line(item: RawItem) -> RawItem:
    """Parse a LAZY JSON Lines item into its value, or the problem with its column."""
    raw, n = item.raw, item.line
    try:
        return RawItem(orjson.loads(raw), n, None)  # valid JSON in strict UTF-8 without NUL bytes
    except orjson.JSONDecodeError:
        pass  # NaN, huge integers or a real problem: the standard library decides and words it
    text, bad = decode_line(raw)
    if bad:
        return RawItem(None, n, None, Problem(n, None, None, bad))
    text = text.rstrip("\r\n")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"invalid JSON ({e.msg}, column {e.colno})"
        if n == 1 and text.strip() == "{":
            msg += (
                "; the file looks like one pretty-printed JSON object: use JSON Lines "
                "(one complete object per line) or a JSON array of objects"
            )
        return RawItem(None, n, None, Problem(n, None, None, msg))
    return RawItem(value, n, None)


def open_file(
    path: str | Path, known_columns: frozenset[str], tsv_default_columns: tuple[str, ...] | None
) -> Source:
    """Sniff `path` and return a Source whose items can be read again from the start."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    compressed = magic == GZIP_MAGIC
    try:
        with _open_binary(path, compressed) as f:
            head = f.read(HEAD_BYTES)
    except _STREAM_ERRORS as e:
        msg = f"the gzip data is corrupt or truncated ({e})"
        return Source(None, compressed, lambda: _fatal(msg))
    container, refusal = _sniff(head)
    if refusal:
        if refusal == "the file is empty" and compressed:
            refusal = "the file is empty (after gzip decompression)"
        return Source(None, compressed, lambda: _fatal(refusal))

    def items() -> Iterator[RawItem]:
        last_line = 0
        try:
            with _open_binary(path, compressed) as f:
                if container == "json":
                    reader = read_json_array(f)
                elif container == "jsonl":
                    reader = _read_jsonl(f)
                elif container == "tsv":
                    reader = read_tsv(f, known_columns, tsv_default_columns)
                else:
                    reader = read_csv(f, known_columns)
                for item in reader:
                    last_line = item.line or last_line
                    yield item
        except _STREAM_ERRORS as e:
            where = f" after line {last_line}" if last_line else ""
            kind = "gzip data" if compressed else "file"
            yield from _fatal(f"the {kind} is corrupt or truncated{where} ({e})")

    return Source(container, compressed, items)


def rows_source(rows: Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]) -> Source:
    """Rows that are already dicts (e.g. a hub dataset): numbered as records from 1.

    Pass a zero-argument callable (or any re-iterable such as a list or datasets.Dataset) so the
    rows can be read twice when the whole-file majority overturns the first guess of the kind.
    """
    if callable(rows):
        factory = rows
        reopenable = True
    else:
        reopenable = iter(rows) is not rows
        factory = lambda: rows

    def items() -> Iterator[RawItem]:
        for i, row in enumerate(factory(), start=1):
            yield RawItem(row, None, i)

    return Source("rows", False, items, reopenable)
