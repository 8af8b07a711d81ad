"""The malformed corpus (tests/fixtures/datasets/malformed, one defect per file): each upload is refused
and its first error names the line/record or field of the defect, in words a user can act on.

The files and manifest.json (file -> substring of the first error) are written by
tests/fixtures/datasets/build.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.data import inspect_file

CORPUS = Path(__file__).parents[2] / "fixtures" / "datasets" / "malformed"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
# defects of the whole file, where there is no line or field to name
FILE_LEVEL = (
    "the file is",
    "zip archives",
    "unrecognised content",
    "is corrupt or truncated",
    "usable example",
    "this is a kto file",
)


def test_corpus_is_complete():
    files = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert files == set(MANIFEST)
    assert len(files) >= 40


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_malformed_file_is_refused_with_located_message(name, tmp_path):
    out = tmp_path / "canonical.jsonl"
    report = inspect_file(CORPUS / name, out_path=out)
    assert not report.ok
    assert report.n_errors >= 1 and report.errors
    first = report.errors[0]
    assert MANIFEST[name] in str(first), str(first)
    if not any(s in first.message for s in FILE_LEVEL):
        assert first.line is not None or first.record is not None or first.field is not None
    assert MANIFEST[name] in report.summary()
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    json.dumps(report.to_dict())  # the API returns it as JSON
