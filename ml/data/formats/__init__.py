"""The format registry (FORMATS) and record-level format detection from content.

detect_record() looks only at one record's keys (plus a predicate where formats share keys) and picks
the most specific match; detect_format() votes over a sample of records. File names are never used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ml.data.formats import chat, instruction, preference
from ml.data.formats.fields import ConvertContext, RecordError, SkipRecord
from ml.data.formats.spec import FormatSpec

FORMATS: dict[str, FormatSpec] = {s.name: s for s in chat.SPECS + instruction.SPECS + preference.SPECS}
# Column names a CSV/TSV header may use (every key any format reads).
KNOWN_COLUMNS: frozenset[str] = frozenset().union(*(s.keys | s.optional for s in FORMATS.values()))
FLAN_COLUMNS = instruction.FLAN_COLUMNS

_BY_SPECIFICITY = sorted(FORMATS.values(), key=lambda s: -len(s.keys))  # stable: registry order on ties
_candidates_cache: dict[frozenset[str], list[FormatSpec]] = {}


def _candidates(present: frozenset[str]) -> list[FormatSpec]:
    found = _candidates_cache.get(present)
    if found is None:
        found = [s for s in _BY_SPECIFICITY if s.keys <= present]
        if len(_candidates_cache) < 4096:
            _candidates_cache[present] = found
    return found


def detect_record(record: Any) -> FormatSpec | None:
    """The most specific format whose required keys this record has; None when nothing fits."""
    if not isinstance(record, dict):
        return None
    present = frozenset(k for k, v in record.items() if v is not None)
    for spec in _candidates(present):
        if spec.matches is None or spec.matches(record):
            return spec
    return None


def detect_format(records: Iterable[Any]) -> FormatSpec | None:
    """Majority vote over sample records; ties go to the format seen first."""
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for i, r in enumerate(records):
        spec = detect_record(r)
        if spec is not None:
            votes[spec.name] += 1
            first_seen.setdefault(spec.name, i)
    if not votes:
        return None
    best = max(votes, key=lambda name: (votes[name], -first_seen[name]))
    return FORMATS[best]


def formats_of_family(family: str) -> list[FormatSpec]:
    return [s for s in FORMATS.values() if s.family == family]


__all__ = [
    "FLAN_COLUMNS",
    "FORMATS",
    "KNOWN_COLUMNS",
    "ConvertContext",
    "FormatSpec",
    "RecordError",
    "SkipRecord",
    "detect_format",
    "detect_record",
    "formats_of_family",
]
