"""Generated text -> OpenAI tool calls, in the ChatForge tool format (see ml.data.render).

Owns parsing assistant text into (content, calls) and doing it incrementally for streams: text before
the first `<tool_call>` is content; each block `<tool_call>\n{"name": N, "arguments": A}\n</tool_call>`
becomes a call whose arguments string is A exactly as generated (valid JSON whenever the block parses).
It does not render prompts (ml.data.render) or constrain decoding (constrained.py).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ml.data.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_OPEN = TOOL_CALL_OPEN.strip()  # "<tool_call>": the model may vary the whitespace around it
_CLOSE = TOOL_CALL_CLOSE.strip()
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON string, as OpenAI sends it

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole generated text. Blocks that do not parse (or name an unknown tool,
    when `names` is given) stay in the content; with no call at all the text is returned unchanged."""
    parser = ToolCallStream(names)
    for _ in parser.feed(text):
        pass
    for _ in parser.finish():
        pass
    return parser.content, parser.calls


class ToolCallStream:
    """Incremental parser: feed() text deltas, get ContentDelta / CallStart / ArgumentsDelta events.

    Content is emitted as soon as it cannot be the start of `<tool_call>`; a call's id and name once its
    head (`{"name": ..., "arguments": `) is complete; its arguments as they grow, holding back only what
    could still be the closing `}` and `</tool_call>`. The concatenated events equal parse_tool_calls."""

    def __init__(self, names: set[str] | None = None) -> None:
        self.names = names
        self.content_parts: list[str] = []
        self.calls: list[ToolCall] = []
        self._buf = ""  # unprocessed text
        self._in_call = False
        self._block = ""  # text of the current block after <tool_call>
        self._sent_args = 0  # characters of the current block's arguments already emitted
        self._head_end = -1
        self._call: ToolCall | None = None
        self._newlines = ""  # content newlines held back
        self._scan = 0  # where to look for the close marker in the current block

    @property
    def content(self) -> str | None:
        text = "".join(self.content_parts)
        return (text or None) if self.calls else text

    def feed(self, text: str):
        self._buf += text
        while self._buf:
            if not self._in_call:
                i = self._buf.find(_OPEN)
                if i < 0:
                    keep = _partial_suffix(self._buf, _OPEN)
                    out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                    if out:
                        yield from self._content(out)
                    return
                if i:
                    yield from self._content(self._buf[:i])
                self._buf = self._buf[i + len(_OPEN) :]
                self._in_call, self._block, self._sent_args, self._head_end, self._call = True, "", 0, -1, None
                self._scan = 0
                continue
            self._block += self._buf
            self._buf = ""
            j = self._block.find(_CLOSE, self._scan)
            while j >= 0 and not self._complete(self._block[:j]):
                # no call ends here: the marker is inside a string argument, or the block is malformed
                # (then it stays open and becomes content at finish())
                self._scan = j + 1
                j = self._block.find(_CLOSE, self._scan)
            if j < 0:
                body = self._block[: len(self._block) - _partial_suffix(self._block, _CLOSE)]
            else:
                body = self._block[:j]
            yield from self._progress(body)
            if j < 0:
                return
            self._buf = self._block[j + len(_CLOSE) :]
            yield from self._close(body)

    def finish(self):
        """End of generation: an unterminated block is content (with what was held back)."""
        if self._in_call:
            yield from self._close(self._block, closed=False)
        elif self._buf:
            yield from self._content(self._buf)
        self._buf = ""
        if self._newlines and not self.calls:  # trailing newlines of a reply without calls
            self.content_parts.append(self._newlines)
            yield ContentDelta(self._newlines)
        self._newlines = ""

    def _content(self, text: str):
        """Content text; trailing newlines wait until more content comes (before a call they are the
        separator, not content)."""
        if self.calls and not text.strip():
            return  # whitespace between or after calls
        text = self._newlines + text
        body = text.rstrip("\n")
        self._newlines = text[len(body) :]
        if body:
            self.content_parts.append(body)
            yield ContentDelta(body)

    def _complete(self, body: str) -> bool:
        """Whether a block's text up to a close marker is one whole call of a known tool."""
        m = _HEAD.match(body)
        if not m or not _is_call(body[m.end() :]):
            return False
        try:
            name = json.loads(m.group(1))
        except ValueError:
            return False
        return self.names is None or name in self.names

    def _progress(self, body: str):
        if self._call is None:
            m = _HEAD.match(body)
            if not m:
                return
            try:
                name = json.loads(m.group(1))
            except ValueError:
                return
            if self.names is not None and name not in self.names:
                return
            self._call = ToolCall(new_call_id(), name, "")
            self._head_end = m.end()
            yield CallStart(len(self.calls), self._call.id, name)
        args = _arguments(body[self._head_end :])
        if len(args) > self._sent_args:
            chunk = args[self._sent_args :]
            self._sent_args = len(args)
            yield ArgumentsDelta(len(self.calls), chunk)

    def _close(self, body: str, closed: bool = True):
        self._in_call = False
        call, self._call = self._call, None
        if closed and call is not None and _is_call(body[self._head_end :]):
            args = _arguments(body[self._head_end :])
            if len(args) > self._sent_args:
                yield ArgumentsDelta(len(self.calls), args[self._sent_args :])
            call.arguments = args
            self.calls.append(call)
            return
        # not a call after all: its text is content (a call already started in a stream stays unfinished)
        yield from self._content(_OPEN + body + (_CLOSE if closed else ""))


def _arguments(tail: str) -> str:
    """The arguments part of a block's text after its head: everything but the closing "}" of the call
    object (and whitespace around it). Grows monotonically as the tail grows."""
    t = tail.strip()
    return t[:-1].rstrip() if t else ""


def _is_call(tail: str) -> bool:
    t = tail.strip()
    if not t.endswith("}"):
        return False
    try:
        return isinstance(json.loads(_arguments(tail)), dict)
    except ValueError:
        return False


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
