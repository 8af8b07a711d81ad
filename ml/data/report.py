"""What validating a dataset found: Problem (one located finding) and ValidationReport (the verdict).

Owns the user-facing wording of locations ("line 7", "record 4 (line 37)"), the capped problem lists
with their totals, and the JSON form the API returns. It does not read files or convert records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MIN_EXAMPLES = 10


@dataclass
class Problem:
    """One finding, located in the upload.

    line: 1-based physical line (JSON Lines, CSV/TSV, and where known inside JSON arrays).
    record: 1-based position of the element in a JSON array or of the row in a hub dataset; None for
    line-oriented files, where the line says it all. field: dotted path inside the record
    ("messages[2].role"), None when the problem is about the whole record or file.
    """

    line: int | None
    record: int | None
    field: str | None
    message: str
    unit: str = "record"  # "row" for Parquet and Arrow files

    @property
    def location(self) -> str:
        if self.record is not None and self.line is not None:
            return f"{self.unit} {self.record} (line {self.line})"
        if self.record is not None:
            return f"{self.unit} {self.record}"
        if self.line is not None:
            return f"line {self.line}"
        return ""

    def __str__(self) -> str:
        loc = self.location
        return f"{loc}: {self.message}" if loc else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "record": self.record,
            "field": self.field,
            "message": self.message,
            "text": str(self),
        }


class ProblemLog:
    """Keeps the first `cap` problems and counts all of them."""

    def __init__(self, cap: int):
        self.cap = cap
        self.items: list[Problem] = []
        self.total = 0

    def add(self, problem: Problem) -> None:
        self.total += 1
        if len(self.items) < self.cap:
            self.items.append(problem)


@dataclass
class ValidationReport:
    """The verdict on one upload; `ok` decides whether it may be used for training."""

    format: str | None  # a key of ml.data.FORMATS, None when no format was recognised
    kind: str | None  # "sft" | "preference" | "prompts"; None when unknown or not trainable
    n_examples: int  # canonical examples produced (after skips)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    n_errors: int = 0  # totals; the lists above may be capped
    n_warnings: int = 0
    duplicates: int = 0  # examples that repeat an earlier example exactly
    token_stats: dict[str, Any] | None = None
    container: str | None = None  # "jsonl" | "json" | "csv" | "tsv" | "rows"
    compressed: bool = False  # the upload was gzip
    n_records: int = 0  # raw records read (rows, array elements, non-blank lines)
    n_skipped: int = 0  # records dropped with a warning (e.g. "<nooutput>", ties)
    min_examples: int = DEFAULT_MIN_EXAMPLES

    @property
    def ok(self) -> bool:
        return (
            self.format is not None
            and self.kind is not None
            and self.n_errors == 0
            and self.n_examples >= self.min_examples
        )

    def problems(self) -> list[Problem]:
        return list(self.errors) + list(self.warnings)

    def summary(self, n: int = 5) -> str:
        """The first n errors (or, when there are none, warnings) as text for a 400 response."""
        if self.ok and not self.warnings:
            return f"{self.n_examples} {self.kind} examples in {self.format} format; no problems found"
        head, total, what = (
            (self.errors, self.n_errors, "error")
            if self.errors
            else (self.warnings, self.n_warnings, "warning")
        )
        lines = [str(p) for p in head[:n]]
        if total > len(lines):
            lines.append(f"... and {total - len(lines)} more {what}{'s' if total - len(lines) > 1 else ''}")
        return "; ".join(lines).replace("\x00", "\\x00")  # user text quoted in a message: storable as text

    def to_dict(self, max_problems: int | None = None) -> dict[str, Any]:
        """JSON-ready form; max_problems caps the errors and warnings lists (totals stay exact)."""
        cap = slice(None) if max_problems is None else slice(max_problems)
        return {
            "ok": self.ok,
            "format": self.format,
            "kind": self.kind,
            "container": self.container,
            "compressed": self.compressed,
            "n_records": self.n_records,
            "n_examples": self.n_examples,
            "n_skipped": self.n_skipped,
            "min_examples": self.min_examples,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "errors": [p.to_dict() for p in self.errors[cap]],
            "warnings": [p.to_dict() for p in self.warnings[cap]],
            "duplicates": self.duplicates,
            "token_stats": self.token_stats,
            "summary": self.summary(),
        }
