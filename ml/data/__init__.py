"""Training data: detecting, converting and validating uploads into canonical records (ml.records).

Public API (what the API layer calls): inspect_file, inspect_rows, load_hub_dataset,
inspect_hub_dataset, preview, the FORMATS registry, Problem and ValidationReport. Chat-template
rendering for training lives in ml.data.render (imported lazily by preview, which needs it).
"""

from __future__ import annotations

from ml.data.formats import FORMATS, FormatSpec, detect_record
from ml.data.hub import DatasetSourceError, inspect_hub_dataset, load_hub_dataset
from ml.data.inspect import check_head, inspect_file, inspect_rows
from ml.data.report import Problem, ValidationReport


def preview(canonical_path, kind: str, tokenizer, n: int = 5, max_length: int | None = None) -> list[dict]:
    """First n canonical records rendered with learned spans marked (see ml.data.preview.preview)."""
    from ml.data.preview import preview as _preview

    return _preview(canonical_path, kind, tokenizer, n=n, max_length=max_length)


__all__ = [
    "FORMATS",
    "DatasetSourceError",
    "FormatSpec",
    "Problem",
    "ValidationReport",
    "check_head",
    "detect_record",
    "inspect_file",
    "inspect_hub_dataset",
    "inspect_rows",
    "load_hub_dataset",
    "preview",
]
