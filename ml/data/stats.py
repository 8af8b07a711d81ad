"""Whole-file statistics gathered while streaming: exact-duplicate examples and token lengths.

Both keep a few bytes per example in compact arrays (never the examples), so a file of millions of
records stays within a few tens of MB. Token lengths come from the base model's chat template
(rendered once per example, tokenised in batches); they may differ by a token from the piecewise
tokenisation in ml.data.render, which is fine for statistics.
"""

from __future__ import annotations

import logging
from array import array
from typing import Any

import numpy as np

from ml.data.fastpath import ChatMLRenderer, PieceCounter, template_messages
from ml.records import Conversation, Message, PreferenceExample, PromptExample, Record

log = logging.getLogger(__name__)

HIST_BINS = 20


_U32 = 2**32 - 1


class DuplicateCounter:
    """Counts examples whose canonical JSON equals an earlier example's."""

    def __init__(self) -> None:
        # 16 bytes per example: 1.6 million examples (1 GB of chats) hold 26 MB
        self._hashes = array("q")
        self._lines = array("I")  # line number, 0 = none
        self._records = array("I")  # record number, 0 = none

    def add(self, canonical_json: bytes, line: int | None, record: int | None) -> None:
        # hash() of bytes is 64-bit SipHash: stable within the process, which is all one pass needs
        self._hashes.append(hash(canonical_json))
        self._lines.append(line if line is not None and line <= _U32 else 0)
        self._records.append(record if record is not None and record <= _U32 else 0)

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
        return (line or None), (record or None)


def _template_messages(messages) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        d = m.to_dict()
        d.pop("weight", None)
        out.append(d)
    return out


def _plain(msgs) -> bool:
    return all(m.role in _PLAIN_ROLES and m.tool_calls is None and m.name is None for m in msgs)


_PLAIN_ROLES = ("system", "user", "assistant")


def fast_texts(renderer: ChatMLRenderer, rec: Record) -> list[str] | None:
    """The chat-template text(s) through the verified string renderer, or None when it does not apply."""
    if isinstance(rec, Conversation):
        if rec.tools or not _plain(rec.messages):
            return None
        return [renderer.render(rec.messages)]
    if isinstance(rec, PreferenceExample):
        if not _plain(rec.prompt) or not _plain((rec.chosen, rec.rejected)):
            return None
        return [renderer.render(rec.prompt + (reply,)) for reply in (rec.chosen, rec.rejected)]
    if isinstance(rec, PromptExample):
        return [renderer.render(rec.prompt, True)] if _plain(rec.prompt) else None
    return None


def render_texts(tokenizer, rec: Record) -> list[str]:
    """The text(s) the chat template produces for one example (two for a preference pair)."""
    if isinstance(rec, Conversation):
        from ml.data.render import apply_tool_format  # the tool format training renders with

        msgs, tools, _ = apply_tool_format(tokenizer, _template_messages(rec.messages), rec.tools)
        return [tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False)]
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

    RENDER_CHECK_FIRST, RENDER_CHECK_EVERY = 32, 1009

    def __init__(self, tokenizer, max_length: int, batch_size: int = 512):
        self.tokenizer = tokenizer
        self.renderer = ChatMLRenderer.for_tokenizer(tokenizer)
        self.pieces = PieceCounter.for_tokenizer(tokenizer)
        self.n_rendered = 0
        self.max_length = max_length
        self.batch_size = batch_size
        self.lengths = array("I")
        self._texts: list[str] = []
        self._groups: list[int] = []
        # set by add(): this example has tool calls the chat template left out of the text
        self.dropped_tool_calls = False

    def add(self, rec: Record) -> str | None:
        """Queue one example; returns an error message when the chat template cannot render it."""
        texts = fast_texts(self.renderer, rec) if self.renderer is not None else None
        if texts is not None:
            if self._checking():
                self._check_render(rec, texts)
            self.dropped_tool_calls = False
            self._queue(texts)
            return None
        try:
            texts = render_texts(self.tokenizer, rec)
        except Exception as e:  # noqa: BLE001 - jinja TemplateError, raise_exception(), odd tool schemas
            return f"the base model's chat template cannot render this example ({e})"
        self.dropped_tool_calls = isinstance(rec, Conversation) and any(
            call["function"]["name"] not in texts[0] for m in rec.messages for call in (m.tool_calls or ())
        )
        self._queue(texts)
        return None

    def add_plain_chat(self, msgs) -> str | None:
        """A chat from ml.data.fastpath.decode_plain_chat (role/content only, ends with the assistant).
        Returns an error message, without queueing anything, when the chat template refuses it."""
        if self.renderer is None:
            try:
                text = self.tokenizer.apply_chat_template(template_messages(msgs), tokenize=False)
            except Exception as e:  # noqa: BLE001 - the caller re-reads the record on the full path
                return f"the base model's chat template cannot render this example ({e})"
        else:
            texts = [self.renderer.render(msgs)]
            if self._checking():
                self._check_render(Conversation(tuple(Message(m.role, m.content) for m in msgs)), texts)
            text = texts[0]
        self.dropped_tool_calls = False
        self._texts.append(text)
        self._groups.append(1)
        if len(self._groups) >= self.batch_size:
            self.flush()
        return None

    def _checking(self) -> bool:
        """Whether this example is one of the sample the string renderer is checked on (counts it)."""
        n = self.n_rendered
        self.n_rendered += 1
        return n < self.RENDER_CHECK_FIRST or n % self.RENDER_CHECK_EVERY == 0

    def _check_render(self, rec: Record, texts: list[str]) -> None:
        """Compare the string renderer with Jinja on a sample of real examples; any difference turns it off."""
        if render_texts(self.tokenizer, rec) != texts:
            log.warning("the string chat-template renderer differs from Jinja; rendering with Jinja")
            self.renderer = None
            texts[:] = render_texts(self.tokenizer, rec)

    def _queue(self, texts: list[str]) -> None:
        self._texts += texts
        self._groups.append(len(texts))
        if len(self._groups) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._texts:
            return
        if self.pieces is not None:
            lengths = self.pieces.count(self._texts)
        else:
            lengths = [len(x) for x in self.tokenizer(self._texts, add_special_tokens=False)["input_ids"]]
        pos = 0
        for g in self._groups:
            self.lengths.append(max(lengths[pos : pos + g]))
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
