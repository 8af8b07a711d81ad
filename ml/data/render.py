"""Canonical records -> token ids through the base model's own chat template.

The ONE place that tokenises chats: training (labels), serving (prompts) and dataset previews all call
it, so a prompt is tokenised identically at train and serve time. It does not read files, pack or pad
batches, or know about any particular model family: spans are found by diffing template renders.

How: the full conversation is rendered to text once; each assistant turn's text span is found by
rendering the prefix before it (with the generation prompt) and the prefix through it, and the text is
cut at every assistant span. Each piece is tokenised on its own, so token boundaries always fall on span
boundaries (exact labels), and a serving prompt -- cut the same way -- is an exact token prefix.

Tools: a chat template that renders tools itself (it mentions `tools`) gets them as they are. Any other
template (SmolLM2's ChatML has no tools section) gets the ChatForge tool format, applied to the messages
before the template sees them (apply_tool_format), identically for training and serving:
- the tools are listed as JSON, one per line, in a block appended to the system message (a system message
  is added when the chat has none);
- an assistant turn's calls are its text: its content (if any), a newline, then one block per call,
  `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, blocks separated by a newline;
- `tool` messages keep their role and content.
ml.serve.tools parses generated text back into calls with the same constants.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError

from ml.records import Conversation, Message, PreferenceExample

IGNORE_INDEX = -100

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"
TOOL_CALL_SEPARATOR = "\n"
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query. The available "
    "functions are listed below, one JSON object per line:\n<tools>\n{tools}\n</tools>\n\n"
    "To call functions, reply with one block per call:\n"
    + TOOL_CALL_OPEN
    + '{{"name": <function-name>, "arguments": <arguments-json-object>}}'
    + TOOL_CALL_CLOSE
)


@dataclass
class RenderedExample:
    """One tokenised conversation ready for a causal-LM loss."""

    input_ids: list[int]
    # Same length as input_ids; IGNORE_INDEX (-100) where the token is context, not learned.
    labels: list[int]
    # The rendered text cut into (text, learned) pieces, in order, for dataset previews.
    segments: list[tuple[str, bool]] = field(default_factory=list)
    # True when max_length cut tokens off the end.
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_learned(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass(frozen=True)
class _Span:
    start: int  # character offsets into the rendered text
    end: int
    learned: bool


def _as_dict(m: Message | dict[str, Any]) -> dict[str, Any]:
    return m.to_dict() if isinstance(m, Message) else dict(m)


def _template_dicts(messages: Iterable[Message | dict[str, Any]]) -> list[dict[str, Any]]:
    # The weight is ours, not the template's: drop it so templates never see unknown keys.
    out = []
    for m in messages:
        d = _as_dict(m)
        d.pop("weight", None)
        out.append(d)
    return out


def template_renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's own chat template renders `tools` (else the ChatForge format is used)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def tool_call_text(name: str, arguments: str | dict[str, Any]) -> str:
    """One call in the ChatForge format. `arguments` is a JSON string (OpenAI's wire form) or a dict;
    a string that parses is re-serialised so training text is always canonical JSON."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args}}}{TOOL_CALL_CLOSE}'


def assistant_tool_text(content: str | None, tool_calls: list[dict[str, Any]]) -> str:
    """An assistant turn with tool calls as the text the model learns and generates."""
    blocks = TOOL_CALL_SEPARATOR.join(
        tool_call_text(c["function"]["name"], c["function"].get("arguments") or "{}") for c in tool_calls
    )
    return f"{content}\n{blocks}" if content else blocks


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def apply_tool_format(
    tokenizer, dicts: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int]:
    """(messages, tools, added) for the template: unchanged when the template renders tools itself or
    the chat has no tools and no tool calls; otherwise the ChatForge tool format (module docstring).
    `added` is 1 when a system message was inserted at the front, else 0."""
    has_calls = any(d.get("tool_calls") for d in dicts)
    if template_renders_tools(tokenizer) or not (tools or has_calls):
        return dicts, tools, 0
    out = []
    for d in dicts:
        d = dict(d)
        if d.get("role") == "assistant" and d.get("tool_calls"):
            d["content"] = assistant_tool_text(d.get("content"), d.pop("tool_calls"))
        elif d.get("role") == "tool":
            d.pop("tool_call_id", None)
            d.pop("name", None)
        if d.get("content") is None:
            d["content"] = ""
        out.append(d)
    added = 0
    if tools:
        block = tools_prompt(tools)
        if out and out[0].get("role") == "system":
            first = out[0]["content"]
            out[0]["content"] = f"{first}\n\n{block}" if first else block
        else:
            out.insert(0, {"role": "system", "content": block})
            added = 1
    return out, None, added


def _render_text(tokenizer, messages: list[dict[str, Any]], tools, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _is_learned(m: Message | dict[str, Any]) -> bool:
    if isinstance(m, Message):
        return m.learned
    w = m.get("weight")
    return m.get("role") == "assistant" and (w is None or w > 0)


def _assistant_spans(
    tokenizer, messages: Sequence[Message | dict[str, Any]], tools, text: str, dicts=None, added: int = 0
) -> list[_Span]:
    """Character spans of every assistant turn in `text`: its content plus the end-of-turn marker.

    Trailing whitespace after the end-of-turn marker (ChatML's newline) is left out: generation stops
    at the marker, so the model never produces it.
    """
    if dicts is None:
        dicts = _template_dicts(messages)
    spans: list[_Span] = []
    cursor = 0
    for i, m in enumerate(dicts):
        if m.get("role") != "assistant":
            continue
        span = _span_by_prefix(tokenizer, dicts, i, tools, text, cursor)
        if span is None:
            span = _span_by_search(tokenizer, m.get("content") or "", text, cursor)
        if span is None:
            continue  # the template dropped this turn (e.g. reasoning stripped); nothing to learn
        start, end = span
        spans.append(_Span(start, end, _is_learned(messages[i - added])))
        cursor = end
    return spans


def _span_by_prefix(tokenizer, dicts, i, tools, text, cursor) -> tuple[int, int] | None:
    try:
        before = _render_text(tokenizer, dicts[:i], tools, add_generation_prompt=True)
        through = _render_text(tokenizer, dicts[: i + 1], tools, add_generation_prompt=False)
    except TemplateError:  # templates may refuse some prefixes (role-alternation checks)
        return None
    if not (text.startswith(before) and text.startswith(through)):
        return None
    start, end = len(before), len(through.rstrip())
    if start < cursor or end <= start:
        return None
    return start, end


def _span_by_search(tokenizer, content: str, text: str, cursor: int) -> tuple[int, int] | None:
    """Fallback for templates whose prefixes are not prefixes of the full render."""
    if not content:
        return None
    start = text.find(content, cursor)
    if start < 0:
        return None
    end = start + len(content)
    for marker in _end_markers(tokenizer):
        if text.startswith(marker, end):
            return start, end + len(marker)
    return start, end


def _end_markers(tokenizer) -> list[str]:
    markers = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if tok and tok not in markers:
            markers.append(tok)
    return markers


def _cut(text: str, spans: list[_Span]) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for s in spans:
        if s.start > pos:
            pieces.append((text[pos : s.start], False))
        pieces.append((text[s.start : s.end], s.learned))
        pos = s.end
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def _tokenize_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> list[list[int]]:
    if not pieces:
        return []
    enc = tokenizer([p for p, _ in pieces], add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def render_conversation(tokenizer, conv: Conversation, max_length: int | None = None) -> RenderedExample:
    """Tokenise a conversation with the chat template; labels are -100 except on learned assistant turns.

    A learned turn (assistant, weight None or > 0) contributes its content and its end-of-turn token
    (<|im_end|> in ChatML). max_length truncates from the end (the prompt side is kept).
    """
    dicts, tools, added = apply_tool_format(tokenizer, _template_dicts(conv.messages), conv.tools)
    text = _render_text(tokenizer, dicts, tools, add_generation_prompt=False)
    pieces = _cut(text, _assistant_spans(tokenizer, conv.messages, tools, text, dicts, added))
    input_ids: list[int] = []
    labels: list[int] = []
    segments: list[tuple[str, bool]] = []
    truncated = False
    for (piece, learned), ids in zip(pieces, _tokenize_pieces(tokenizer, pieces)):
        if max_length is not None and len(input_ids) + len(ids) > max_length:
            ids = ids[: max_length - len(input_ids)]
            piece = tokenizer.decode(ids, skip_special_tokens=False)
            truncated = True
        input_ids += ids
        labels += ids if learned else [IGNORE_INDEX] * len(ids)
        if piece:
            segments.append((piece, learned))
        if truncated:
            break
    return RenderedExample(input_ids, labels, segments, truncated)


def render_prompt(
    tokenizer,
    messages: Sequence[Message | dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of a prompt for generation, cut exactly as render_conversation cuts training text.

    `messages` may be canonical Messages or OpenAI-style dicts. render_prompt(conv[:-1]) is a token
    prefix of render_conversation(conv).input_ids whenever conv ends with an assistant turn.
    """
    dicts, tools, added = apply_tool_format(tokenizer, _template_dicts(messages), tools)
    text = _render_text(tokenizer, dicts, tools, add_generation_prompt=add_generation_prompt)
    pieces = _cut(text, _assistant_spans(tokenizer, messages, tools, text, dicts, added))
    return [t for ids in _tokenize_pieces(tokenizer, pieces) for t in ids]


def render_preference(
    tokenizer, ex: PreferenceExample, max_length: int | None = None
) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) for preference training (DPO, reward models).

    prompt_ids end with the generation prompt; each completion is its assistant content plus the
    end-of-turn token, tokenised exactly as render_conversation would. With max_length, the prompt is
    cut from the left (its end is kept, at least half of max_length), then completions from the right.
    """
    prompt_ids = render_prompt(tokenizer, ex.prompt)
    completions = []
    for reply in (ex.chosen, ex.rejected):
        reply = Message("assistant", reply.content, None, reply.tool_calls, reply.name)
        full = render_conversation(tokenizer, Conversation(tuple(ex.prompt) + (reply,)))
        if full.input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("chat template does not render the prompt as a prefix of the reply")
        completions.append(
            [
                t
                for t, lab in zip(full.input_ids[len(prompt_ids) :], full.labels[len(prompt_ids) :])
                if lab != IGNORE_INDEX
            ]
        )
    chosen, rejected = completions
    if max_length is not None:
        longest = max(len(chosen), len(rejected))
        keep_prompt = min(len(prompt_ids), max(max_length - longest, max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        room = max_length - len(prompt_ids)
        chosen, rejected = chosen[:room], rejected[:room]
    return prompt_ids, chosen, rejected
