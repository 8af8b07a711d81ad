"""Token ids -> text deltas while streaming, and stop-string matching on that text.

Owns incremental detokenisation (partial UTF-8 bytes and SentencePiece/BPE word-boundary spaces come
out right because each delta is the difference of two decodes of a short sliding window) and the
hold-back that keeps a possible stop-string prefix from being emitted. It does not sample or decide
when a sequence ends on token ids.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed generated ids one by one; each call returns the newly completed text (maybe "").

    The concatenation of all deltas plus flush() equals tokenizer.decode(all_ids,
    skip_special_tokens=True) for byte-level BPE and SentencePiece tokenizers.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: one already-emitted token gives spacing context
        self._read = 0  # ids before this are fully emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        # A trailing U+FFFD means a multi-byte character is still incomplete: wait for more bytes.
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of the sequence (e.g. a truncated character)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Accumulates text; releases only what can no longer turn into a stop string.

    push(delta) -> (text safe to emit, matched) ; once matched, the text before the first stop
    string has been released and nothing after it ever will be.
    """

    def __init__(self, stops: list[str] | None) -> None:
        self.stops = [s for s in (stops or []) if s]
        self._pending = ""
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        keep = self._held_suffix(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        for n in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
