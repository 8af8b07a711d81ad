"""Whole-file statistics gathered while streaming: exact-duplicate examples and token lengths.

Both keep a few bytes per example in compact arrays (never the examples), so a file of millions of
records stays within a few tens of MB. Token lengths come from the base model's chat template
(rendered once per example, tokenised in batches); they may differ by a token from the piecewise
tokenisation in ml.data.render, which is fine for statistics.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import numpy as np

from ml.records import Conversation, PreferenceExample, PromptExample, Record

HIST_BINS = 20


class DuplicateCounter:
    """Counts examples whose canonical JSON equals an earlier example's."""

    def __init__(self) -> None:
        self._hashes = array("q")
        self._lines = array("q")  # line number or -1
        self._records = array("q")  # record number or -1

    def add(self, canonical_json: str, line: int | None, record: int | None) -> None:
        digest = hashlib.blake2b(canonical_json.encode("utf-8"), digest_size=8).digest()
        self._hashes.append(int.from_bytes(digest, "little", signed=True))
        self._lines.append(-1 if line is None else line)
        self._records.append(-1 if record is None else record)

    def result(self) -> tuple[int, tuple[int, int] | None]:
        """(number of duplicates, (index of the first duplicate, index of the example it repeats))."""
        n = len(self._hashes)
        if n < 2:
            return 0, None
        h = np.frombuffer(self._hashes, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        sh = h[order]
        same = sh[1:] == sh[:-1]
        dups = int(same.sum())
        if not dups:
            return 0, None
        # within a run of equal hashes the stable sort keeps file order, so the run start is the original
        starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
        run_start = starts[np.searchsorted(starts, np.arange(n), side="right") - 1]
        later = np.flatnonzero(np.concatenate(([False], same)))
        first = later[np.argmin(order[later])]
        return dups, (int(order[first]), int(order[run_start[first]]))

    def where(self, index: int) -> tuple[int | None, int | None]:
        line, record = self._lines[index], self._records[index]
        return (None if line < 0 else line), (None if record < 0 else record)


def _template_messages(messages) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        d = m.to_dict()
        d.pop("weight", None)
        out.append(d)
    return out


def render_texts(tokenizer, rec: Record) -> list[str]:
    """The text(s) the chat template produces for one example (two for a preference pair)."""
    if isinstance(rec, Conversation):
        return [
            tokenizer.apply_chat_template(
                _template_messages(rec.messages), tools=rec.tools or None, tokenize=False
            )
        ]
    if isinstance(rec, PreferenceExample):
        return [
            tokenizer.apply_chat_template(_template_messages(rec.prompt + (reply,)), tokenize=False)
            for reply in (rec.chosen, rec.rejected)
        ]
    if isinstance(rec, PromptExample):
        return [
            tokenizer.apply_chat_template(
                _template_messages(rec.prompt), tokenize=False, add_generation_prompt=True
            )
        ]
    raise TypeError(f"not a canonical record: {type(rec).__name__}")


class TokenCounter:
    """Token length per example (the longer side for a preference pair), batched through the tokenizer."""

    def __init__(self, tokenizer, max_length: int, batch_size: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.lengths = array("I")
        self._texts: list[str] = []
        self._groups: list[int] = []
        # set by add(): this example has tool calls the chat template left out of the text
        self.dropped_tool_calls = False

    def add(self, rec: Record) -> str | None:
        """Queue one example; returns an error message when the chat template cannot render it."""
        try:
            texts = render_texts(self.tokenizer, rec)
        except Exception as e:  # noqa: BLE001 - jinja TemplateError, raise_exception(), odd tool schemas
            return f"the base model's chat template cannot render this example ({e})"
        self.dropped_tool_calls = isinstance(rec, Conversation) and any(
            call["function"]["name"] not in texts[0] for m in rec.messages for call in (m.tool_calls or ())
        )
        self._texts += texts
        self._groups.append(len(texts))
        if len(self._groups) >= self.batch_size:
            self.flush()
        return None

    def flush(self) -> None:
        if not self._texts:
            return
        ids = self.tokenizer(self._texts, add_special_tokens=False)["input_ids"]
        pos = 0
        for g in self._groups:
            self.lengths.append(max(len(x) for x in ids[pos : pos + g]))
            pos += g
        self._texts, self._groups = [], []

    def result(self) -> dict[str, Any] | None:
        self.flush()
        if not self.lengths:
            return None
        a = np.frombuffer(self.lengths, dtype=np.uint32).astype(np.int64)
        over = int((a > self.max_length).sum())
        top = int(a.max())
        counts, edges = np.histogram(a, bins=HIST_BINS, range=(0, max(top, 1)))
        return {
            "n": int(a.size),
            "total": int(a.sum()),
            "mean": round(float(a.mean()), 1),
            "min": int(a.min()),
            "p50": int(np.percentile(a, 50, method="nearest")),
            "p95": int(np.percentile(a, 95, method="nearest")),
            "max": top,
            "max_length": self.max_length,
            "over_max_length": over,
            "over_max_length_share": round(over / a.size, 4),
            "histogram": {"edges": [round(float(e)) for e in edges], "counts": [int(c) for c in counts]},
        }
