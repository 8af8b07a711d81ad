"""Public entry points for validating training data: an uploaded file or an iterable of row dicts.

Both stream their input, never raise for bad content (problems go into the ValidationReport), and
write canonical JSONL (ml.records) to out_path only when the report is ok. Bad *arguments* (an
unknown forced_format) raise ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ml.data.formats import FLAN_COLUMNS, KNOWN_COLUMNS
from ml.data.limits import HEAD_CHECK_BYTES
from ml.data.pipeline import Options, resolve_format, run_source
from ml.data.report import DEFAULT_MIN_EXAMPLES, Problem, ValidationReport
from ml.data.sources import open_file, parse_line, rows_source
from ml.data.text_lines import LAZY


def _tokenizer(tokenizer):
    if isinstance(tokenizer, (str, Path)):
        from ml.models import load_tokenizer  # imports torch; only when given a path

        return load_tokenizer(tokenizer)
    return tokenizer


def _options(forced_format, tokenizer, max_length, out_path, max_errors, min_examples) -> Options:
    if max_length < 1:
        raise ValueError("max_length must be positive")
    return Options(
        forced=resolve_format(forced_format),
        tokenizer=_tokenizer(tokenizer),
        max_length=max_length,
        out_path=Path(out_path) if out_path is not None else None,
        max_errors=max_errors,
        min_examples=min_examples,
    )


def inspect_file(
    path: str | Path,
    *,
    forced_format: str | None = None,
    tokenizer=None,
    max_length: int = 2048,
    out_path: str | Path | None = None,
    max_errors: int = 1000,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    progress: Callable[[float], None] | None = None,
) -> ValidationReport:
    """Detect, convert and validate an uploaded training file.

    The container (JSON array, JSON Lines, CSV, TSV; any of them gzip-compressed) and the record
    format (a key of FORMATS) are recognised from the content, never from the file name;
    forced_format overrides the record format. tokenizer (an HF tokenizer or a path to one) adds token
    statistics through the chat template and refuses examples the template cannot render.
    Problems are located as "line N" (JSON Lines, CSV/TSV) or "record N (line L)" (JSON arrays,
    records counted from 1). At most max_errors errors and max_errors warnings are listed; the
    report's n_errors/n_warnings count all of them. Parquet files and zipped/tarred datasets
    save_to_disk folders are read row by row; their problems say "row N". progress, when given, is
    called now and then with the fraction of the file read (0..1).
    """
    source = open_file(path, KNOWN_COLUMNS, FLAN_COLUMNS, progress)
    return run_source(
        source, _options(forced_format, tokenizer, max_length, out_path, max_errors, min_examples)
    )


def inspect_rows(
    rows: Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]],
    *,
    forced_format: str | None = None,
    tokenizer=None,
    max_length: int = 2048,
    out_path: str | Path | None = None,
    max_errors: int = 1000,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> ValidationReport:
    """Like inspect_file for rows that are already dicts (a hub dataset); problems say "record N".

    Pass a list, a datasets.Dataset, or a zero-argument callable returning a fresh iterator, so the
    rows can be read a second time in the rare case where the whole-file majority overturns the kind
    guessed from the first rows; a one-shot iterator is read once.
    """
    source = rows_source(rows)
    return run_source(
        source, _options(forced_format, tokenizer, max_length, out_path, max_errors, min_examples)
    )


def check_head(path: str | Path, head_bytes: int = HEAD_CHECK_BYTES) -> Problem | None:
    """The first problem in about the first head_bytes of (decompressed) text, or None: a cheap look
    for a file too large to validate at once, so that an unreadable one (binary, a line or record over
    the size limit, JSON nested too deeply, bad UTF-8, a decompression bomb) is refused at upload.
    Archives and Parquet are not looked into; the record formats are not checked."""
    source = open_file(path, KNOWN_COLUMNS, FLAN_COLUMNS, head_bytes=head_bytes)
    for item in source.open_items():
        if item.value is LAZY:
            item = parse_line(item)
        if item.problem is not None:
            return item.problem
    return None
