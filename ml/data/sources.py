"""Where raw records come from: an uploaded file (sniffed by content) or an iterable of row dicts.

Owns container detection from the bytes themselves (gzip by magic number; JSON array, JSON Lines,
CSV or TSV by the first characters; binary, UTF-16, zip and Parquet refused with a clear message) and
hands out a re-openable stream of RawItems. Record formats are decided later, in ml.data.pipeline.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ml.data.json_array import read_json_array
from ml.data.limits import (
    MAX_DECOMPRESSED_BYTES,
    MAX_GZIP_RATIO,
    MAX_RECORD_BYTES,
    RATIO_AFTER_BYTES,
    BoundedStream,
    HeadDone,
    LimitExceeded,
    mib,
    record_too_large,
)
from ml.data.report import Problem
from ml.data.tabular import first_line_kind, read_csv, read_tsv
from ml.data.text_lines import LAZY, RawItem, decode_line

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ROW_CONTAINERS = ("parquet", "arrow")  # problems there say "row N"
PROGRESS_EVERY = 1024  # items between progress callbacks
HEAD_BYTES = 64 * 1024
MAX_ARCHIVE_MEMBERS = 10_000
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
    if head.startswith(b"PK\x03\x04") or head[257:262] == b"ustar":
        return "archive", None
    if head.startswith(b"PAR1"):
        return "parquet", None
    if b"\x00" in head:
        at = head.index(b"\x00")
        line, col = head.count(b"\n", 0, at) + 1, at - head.rfind(b"\n", 0, at)
        return None, (
            f"the file is binary (NUL byte at offset {at}: line {line}, column {col}), not text; upload JSON, "
            "JSON Lines, CSV or TSV (optionally gzip-compressed)"
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
    """Lines as LAZY items: the validation pass parses each one (parse_line) or takes a fast path.
    A line longer than MAX_RECORD_BYTES stops reading (it is never held whole)."""
    n = 0
    while raw := stream.readline(MAX_RECORD_BYTES + 1):
        n += 1
        if len(raw) > MAX_RECORD_BYTES:
            yield RawItem(None, n, None, Problem(n, None, None, record_too_large("the line")), fatal=True)
            return
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
    except RecursionError:
        return RawItem(None, n, None, Problem(n, None, None, TOO_DEEP))
    except json.JSONDecodeError as e:
        msg = f"invalid JSON ({e.msg}, column {e.colno})"
        if n == 1 and text.strip() == "{":
            msg += (
                "; the file looks like one pretty-printed JSON object: use JSON Lines "
                "(one complete object per line) or a JSON array of objects"
            )
        return RawItem(None, n, None, Problem(n, None, None, msg))
    return RawItem(value, n, None)


TOO_DEEP = "invalid JSON: arrays or objects nested too deeply (hundreds of levels)"
ARCHIVE_REFUSAL = (
    "zip archives are not supported (except a Hugging Face datasets save_to_disk folder, zipped or tarred); "
    "upload the .jsonl, .json, .csv, .tsv or .parquet file (or gzip it)"
)


def _parquet_rows(path: Path, progress) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n, groups = 0, pf.num_row_groups
    for g in range(groups):
        for batch in pf.iter_batches(batch_size=2048, row_groups=[g]):
            for row in batch.to_pylist():
                n += 1
                yield RawItem(row, None, n)
        if progress is not None:
            progress((g + 1) / groups)


def _extract_dataset(path: Path, compressed: bool) -> tuple[Path, Path] | None:
    """Unpack a zip/tar(.gz) into a temporary folder; the folder holding a datasets save_to_disk
    (dataset_info.json / state.json next to .arrow files) with the temporary root, or None."""
    import shutil
    import tarfile
    import tempfile
    import zipfile

    tmp = Path(tempfile.mkdtemp(prefix="chatforge-archive-"))
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                for info in infos:
                    if info.filename.startswith("/") or ".." in Path(info.filename).parts:
                        raise ValueError(f"unsafe path in archive: {info.filename}")
                _check_archive(len(infos), sum(i.file_size for i in infos), path.stat().st_size)
                z.extractall(tmp)
        else:
            with open(path, "rb") as raw:
                inner = gzip.GzipFile(fileobj=raw) if compressed else raw
                with tarfile.open(fileobj=BoundedStream(inner, raw if compressed else None), mode="r|") as t:
                    t.extractall(tmp, filter=_counting_filter())
        for dd in sorted(tmp.rglob("dataset_dict.json")):  # a DatasetDict: its train split
            if (dd.parent / "train" / "state.json").exists():
                return tmp, dd.parent / "train"
        for state in sorted(tmp.rglob("state.json")):
            if any(state.parent.glob("*.arrow")):
                return tmp, state.parent
    except LimitExceeded:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - unreadable or unsafe archive: refused with one message
        log.info("archive %s is not a readable dataset folder: %s", path, e)
    shutil.rmtree(tmp, ignore_errors=True)
    return None


def _check_archive(members: int, unpacked: int, packed: int) -> None:
    if members > MAX_ARCHIVE_MEMBERS:
        raise LimitExceeded(f"the archive holds more than {MAX_ARCHIVE_MEMBERS} files")
    if unpacked > MAX_DECOMPRESSED_BYTES or unpacked > max(MAX_GZIP_RATIO * packed, RATIO_AFTER_BYTES):
        raise LimitExceeded(f"the archive unpacks to {unpacked} bytes from {packed} (at most "
                            f"{mib(MAX_DECOMPRESSED_BYTES)} and {MAX_GZIP_RATIO} times its size)")


def _counting_filter():
    """tarfile's "data" filter that also refuses an archive of too many members (the bytes are bounded
    by the stream it reads)."""
    import tarfile

    seen = [0]

    def check(member, dest):
        seen[0] += 1
        if seen[0] > MAX_ARCHIVE_MEMBERS:
            raise LimitExceeded(f"the archive holds more than {MAX_ARCHIVE_MEMBERS} files")
        return tarfile.data_filter(member, dest)

    return check


def _arrow_source(root: Path, folder: Path, progress) -> Source:
    import shutil
    import weakref

    def items() -> Iterator[RawItem]:
        from datasets import load_from_disk

        ds = load_from_disk(str(folder))
        total = max(len(ds), 1)
        for n, row in enumerate(ds, start=1):
            yield RawItem(row, None, n)
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(n / total)

    source = Source("arrow", False, items)
    weakref.finalize(source, shutil.rmtree, root, True)  # the unpacked copy lives as long as the source
    return source


def open_file(
    path: str | Path,
    known_columns: frozenset[str],
    tsv_default_columns: tuple[str, ...] | None,
    progress=None,
    head_bytes: int | None = None,
) -> Source:
    """Sniff `path` and return a Source whose items can be read again from the start.

    progress: an optional callable taking the fraction (0..1) of the file read so far. head_bytes: read
    only about this much (decompressed) text and stop quietly; archives and Parquet then yield nothing."""
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
    if head_bytes is not None and container in ("archive", "parquet"):
        return Source(container, compressed, lambda: iter(()))
    if container == "parquet" and not compressed:
        return Source("parquet", False, lambda: _parquet_rows(path, progress))
    if container in ("archive", "parquet"):
        try:
            found = _extract_dataset(path, compressed) if container == "archive" else None
        except LimitExceeded as e:
            message = str(e)
            return Source(None, compressed, lambda: _fatal(message))
        if found is None:
            return Source(None, compressed, lambda: _fatal(ARCHIVE_REFUSAL))
        return _arrow_source(*found, progress)
    if refusal:
        if refusal == "the file is empty" and compressed:
            refusal = "the file is empty (after gzip decompression)"
        return Source(None, compressed, lambda: _fatal(refusal))

    size = max(path.stat().st_size, 1)

    def items() -> Iterator[RawItem]:
        last_line = 0
        try:
            with open(path, "rb") as raw, (gzip.GzipFile(fileobj=raw) if compressed else raw) as inner:
                f = BoundedStream(inner, raw if compressed else None, head_bytes)
                if container == "json":
                    reader = read_json_array(f)
                elif container == "jsonl":
                    reader = _read_jsonl(f)
                elif container == "tsv":
                    reader = read_tsv(f, known_columns, tsv_default_columns)
                else:
                    reader = read_csv(f, known_columns)
                if progress is None:
                    for item in reader:
                        last_line = item.line or last_line
                        yield item
                else:
                    for n, item in enumerate(reader):
                        last_line = item.line or last_line
                        yield item
                        if n % PROGRESS_EVERY == 0:
                            progress(raw.tell() / size)
        except HeadDone:
            return
        except LimitExceeded as e:
            yield from _fatal(str(e), e.line)
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
