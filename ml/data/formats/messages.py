"""Reading message lists, tool definitions and Human/Assistant transcripts into canonical Messages.

Owns the rules every chat-shaped format shares: allowed roles, text-only content, tool calls on
assistant turns, OpenAI's 0/1 weights, empty-content policy (an empty assistant turn is an error, an
empty user/system turn a warning), and the Anthropic hh-rlhf transcript grammar.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ml.data.formats.fields import ConvertContext, RecordError, json_type, present, quoted
from ml.records import ROLES, Message

_ROLE_LIST = ", ".join(ROLES)


def _content(m: dict[str, Any], p: str) -> str | None:
    if not present(m, "content"):
        return None
    c = m["content"]
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts: only text is trainable here
        texts = []
        for j, part in enumerate(c):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                what = quoted(str(kind)) if kind else json_type(part)
                raise RecordError(
                    f"{p}.content[{j}]", f"{p}.content[{j}]: only text content is supported, got {what}"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RecordError(f"{p}.content", f"{p}.content must be a string, got {json_type(c)}")


def parse_tool_calls(value: Any, p: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RecordError(p, f"{p} must be a non-empty array of tool calls, got {json_type(value)}")
    calls = []
    for j, call in enumerate(value):
        q = f"{p}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise RecordError(f"{q}.function", f'{q} must be an object with a "function" object')
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RecordError(f"{q}.function.name", f"{q}.function.name must be a non-empty string")
        args = fn.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        if not isinstance(args, str):
            raise RecordError(
                f"{q}.function.arguments",
                f"{q}.function.arguments must be a JSON string, got {json_type(args)}",
            )
        out = {"type": call.get("type") or "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


def parse_message(m: Any, p: str, ctx: ConvertContext) -> Message:
    if not isinstance(m, dict):
        raise RecordError(p, f"{p} must be an object with role and content, got {json_type(m)}")
    role = m.get("role")
    if role is None:
        raise RecordError(f"{p}.role", f'missing "{p}.role"')
    if role not in ROLES:
        shown = quoted(role) if isinstance(role, str) else json_type(role)
        raise RecordError(f"{p}.role", f"{p}.role {shown} is not one of {_ROLE_LIST}")
    tool_calls = None
    if present(m, "tool_calls"):
        if role != "assistant":
            raise RecordError(f"{p}.tool_calls", f"{p}.tool_calls is only allowed on assistant messages")
        tool_calls = parse_tool_calls(m["tool_calls"], f"{p}.tool_calls")
    content = _content(m, p)
    if content is None and tool_calls is None:
        raise RecordError(f"{p}.content", f'missing "{p}.content"')
    if not (content or "").strip() and tool_calls is None:
        if role == "assistant":
            raise RecordError(f"{p}.content", f"{p}.content is empty (an assistant reply must have text)")
        ctx.warn(f"{p}.content", f"{p}.content is empty")
    weight = m.get("weight")
    if weight is not None:
        if role != "assistant":
            raise RecordError(f"{p}.weight", f"{p}.weight is only allowed on assistant messages")
        if isinstance(weight, bool) or weight not in (0, 1):
            raise RecordError(f"{p}.weight", f"{p}.weight must be 0 or 1, got {json.dumps(weight)}")
        weight = float(weight)
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise RecordError(f"{p}.name", f"{p}.name must be a string, got {json_type(name)}")
    return Message(role, content or "", weight, tool_calls, name)


def parse_messages(items: Any, p: str, ctx: ConvertContext) -> list[Message]:
    if not isinstance(items, list):
        raise RecordError(p, f'"{p}" must be an array of messages, got {json_type(items)}')
    if not items:
        raise RecordError(p, f'"{p}" is empty')
    return [parse_message(m, f"{p}[{i}]", ctx) for i, m in enumerate(items)]


def parse_tools(value: Any, p: str = "tools") -> list[dict[str, Any]] | None:
    """OpenAI tool definitions; bare function schemas (glaive, LLaMA-Factory) are wrapped.

    A JSON string is parsed first (LLaMA-Factory stores tools as text); "" and "[]" mean no tools.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                p, f'"{p}" is a string but not valid JSON ({e.msg}, column {e.colno})'
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(p, f'"{p}" must be an array of tool definitions, got {json_type(value)}')
    tools = []
    for i, t in enumerate(value):
        q = f"{p}[{i}]"
        if not isinstance(t, dict):
            raise RecordError(q, f"{q} must be an object, got {json_type(t)}")
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RecordError(q, f'{q} must name the function ("name" or "function.name")')
        tools.append({"type": t.get("type") or "function", "function": fn} if fn is t else t)
    return tools or None


# -- Anthropic hh-rlhf transcripts ("\n\nHuman: ...\n\nAssistant: ...") --------------------------------

_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
ASSISTANT_MARK = "\n\nAssistant:"


def _normalise(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(("Human:", "Assistant:")):
        return "\n\n" + stripped
    return text


def looks_like_transcript(text: str) -> bool:
    return _normalise(text).startswith("\n\nHuman:")


def parse_transcript(text: str, p: str) -> list[Message]:
    """Every Human/Assistant turn in order; text before the first turn becomes a system message."""
    parts = _TURN.split(_normalise(text))
    msgs: list[Message] = []
    if parts[0].strip():
        msgs.append(Message("system", parts[0].strip()))
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append(Message(_HH_ROLE[role], content.strip()))
    if not any(m.role == "user" for m in msgs):
        raise RecordError(p, f'"{p}" has no "Human:" turn')
    return msgs


def split_transcript(text: str, p: str) -> tuple[str, list[Message], str]:
    """(prompt text, prompt messages, reply) split at the LAST "\\n\\nAssistant:".

    The prompt keeps every earlier turn as history; the reply loses its leading space.
    """
    text = _normalise(text)
    cut = text.rfind(ASSISTANT_MARK)
    if cut < 0:
        raise RecordError(p, f'"{p}" has no "\\n\\nAssistant:" turn')
    prompt_text = text[: cut + len(ASSISTANT_MARK)]
    reply = text[cut + len(ASSISTANT_MARK) :]
    reply = reply.removeprefix(" ")
    msgs = parse_transcript(text[:cut], p)
    if msgs[-1].role != "user":
        raise RecordError(p, f'"{p}": the turn before the last "Assistant:" must be a "Human:" turn')
    return prompt_text, msgs, reply
