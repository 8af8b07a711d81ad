"""Chat-shaped formats: OpenAI chat and prompt-only messages, legacy prompt/completion, ShareGPT
(FastChat and LLaMA-Factory, with glaive tool calls), and LLaMA-Factory KTO (validated, not trainable).

Each converter reads one raw record into canonical records or raises RecordError/SkipRecord.
The SFT rule lives here too: an example must end on an assistant turn; trailing user turns after
the last reply are dropped with a warning, and no assistant turn at all is an error.
"""

from __future__ import annotations

import json
from typing import Any

from ml.data.formats.fields import (
    ConvertContext,
    RecordError,
    SkipRecord,
    get_list,
    get_str,
    json_type,
    present,
    quoted,
)
from ml.data.formats.messages import parse_messages, parse_tools
from ml.data.formats.spec import FormatSpec
from ml.records import Conversation, Message, PromptExample, Record


def finish_sft(msgs: list[Message], tools, ctx: ConvertContext, p: str) -> Conversation:
    last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=-1)
    if last < 0:
        raise RecordError(p, "no assistant message to learn from")
    if last < len(msgs) - 1:
        dropped = len(msgs) - 1 - last
        roles = ", ".join(sorted({m.role for m in msgs[last + 1 :]}))
        ctx.warn(
            p,
            f"the conversation ends with {dropped} {roles} message{'s' if dropped > 1 else ''} after the "
            "last assistant reply; dropped (nothing would be learned from it)",
        )
        msgs = msgs[: last + 1]
    if not any(m.learned for m in msgs):
        raise RecordError(p, "every assistant message has weight 0: nothing to learn from")
    return Conversation(tuple(msgs), tools)


def _last_role(r: dict[str, Any], key: str, sharegpt: bool = False) -> str | None:
    items = r.get(key)
    if not isinstance(items, list) or not items or not isinstance(items[-1], dict):
        return None
    return items[-1].get("from" if sharegpt else "role")


# -- OpenAI ----------------------------------------------------------------------------------------


def convert_openai_chat(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    msgs = parse_messages(get_list(r, "messages"), "messages", ctx)
    return [finish_sft(msgs, parse_tools(r.get("tools")), ctx, "messages")]


def prompt_messages(msgs: list[Message], p: str) -> tuple[Message, ...]:
    last = msgs[-1]
    if last.role == "assistant":
        raise RecordError(
            f"{p}[{len(msgs) - 1}]",
            "the last message is from the assistant: a prompt-only example must end with a user message "
            "(the reply is generated during training)",
        )
    if last.role == "system":
        raise RecordError(
            f"{p}[{len(msgs) - 1}]", "a prompt must end with a user message, not a system message"
        )
    return tuple(msgs)


def convert_openai_prompts(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    msgs = parse_messages(get_list(r, "messages"), "messages", ctx)
    if present(r, "tools"):
        ctx.warn("tools", "tools are ignored for prompt-only examples")
    return [PromptExample(prompt_messages(msgs, "messages"))]


def convert_prompt_only(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    prompt = r.get("prompt")
    if isinstance(prompt, list):
        return [PromptExample(prompt_messages(parse_messages(prompt, "prompt", ctx), "prompt"))]
    text = get_str(r, "prompt")
    if not text.strip():
        raise RecordError("prompt", '"prompt" is empty')
    return [PromptExample((Message("user", text),))]


def convert_openai_completion(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    prompt, completion = get_str(r, "prompt"), get_str(r, "completion")
    if not completion.strip():
        raise SkipRecord("completion", '"completion" is empty; record skipped')
    if not prompt.strip():
        ctx.warn("prompt", '"prompt" is empty')
    return [Conversation((Message("user", prompt), Message("assistant", completion)))]


# -- ShareGPT ----------------------------------------------------------------------------------------

_SHAREGPT_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
_SHAREGPT_FROM = "human, gpt, system, function_call, observation"


def _function_call(value: str, p: str) -> list[dict[str, Any]]:
    try:
        call = json.loads(value)
    except json.JSONDecodeError as e:
        raise RecordError(
            p, f'{p} (a function_call) must be JSON with "name" and "arguments" ({e.msg}, column {e.colno})'
        ) from None
    calls = call if isinstance(call, list) else [call]
    out = []
    for c in calls:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise RecordError(p, f'{p} (a function_call) must be a JSON object with a "name"')
        args = c.get("arguments", {})
        out.append(
            {
                "type": "function",
                "function": {
                    "name": c["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
    return out


def sharegpt_turn(t: Any, p: str, ctx: ConvertContext) -> Message:
    if not isinstance(t, dict):
        raise RecordError(p, f'{p} must be an object with "from" and "value", got {json_type(t)}')
    who = t.get("from")
    if who is None:
        raise RecordError(f"{p}.from", f'missing "{p}.from"')
    if who not in _SHAREGPT_ROLE:
        shown = quoted(who) if isinstance(who, str) else json_type(who)
        raise RecordError(f"{p}.from", f"{p}.from {shown} is not one of {_SHAREGPT_FROM}")
    value = get_str(t, "value", f"{p}.value")
    role = _SHAREGPT_ROLE[who]
    if who == "function_call":
        return Message("assistant", "", tool_calls=_function_call(value, f"{p}.value"))
    if not value.strip():
        if role == "assistant":
            raise RecordError(f"{p}.value", f"{p}.value is empty (a {who} reply must have text)")
        ctx.warn(f"{p}.value", f"{p}.value is empty")
    return Message(role, value)


def sharegpt_messages(r: dict[str, Any], ctx: ConvertContext) -> list[Message]:
    turns = get_list(r, "conversations")
    if not turns:
        raise RecordError("conversations", '"conversations" is empty')
    msgs = [sharegpt_turn(t, f"conversations[{i}]", ctx) for i, t in enumerate(turns)]
    system = get_str(r, "system", required=False)
    if system.strip() and msgs[0].role != "system":
        msgs.insert(0, Message("system", system))
    return msgs


def convert_sharegpt(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    msgs = sharegpt_messages(r, ctx)
    return [finish_sft(msgs, parse_tools(r.get("tools")), ctx, "conversations")]


# -- LLaMA-Factory KTO (unpaired preference) ---------------------------------------------------------


def convert_kto(r: dict[str, Any], ctx: ConvertContext) -> list[Record]:
    msgs = parse_messages(get_list(r, "messages"), "messages", ctx)
    if not isinstance(r.get("label"), bool):
        raise RecordError("label", f'"label" must be true or false, got {json_type(r.get("label"))}')
    return [finish_sft(msgs, None, ctx, "messages")]


SPECS = [
    FormatSpec(
        "openai_chat",
        "sft",
        "openai_messages",
        "OpenAI chat fine-tuning JSONL: a messages list ending with the assistant reply; optional "
        "per-message weight (0/1), tool_calls and a tools list. Also LLaMA-Factory's OpenAI-style files.",
        frozenset({"messages"}),
        convert_openai_chat,
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        matches=lambda r: _last_role(r, "messages") == "assistant",
        optional=frozenset({"tools", "parallel_tool_calls"}),
    ),
    FormatSpec(
        "openai_prompts",
        "prompts",
        "openai_messages",
        "Prompt-only messages for online RL (PPO/RLOO/GRPO): a messages list ending with a user turn.",
        frozenset({"messages"}),
        convert_openai_prompts,
        {"messages": [{"role": "user", "content": "Write a haiku about rain."}]},
        matches=lambda r: _last_role(r, "messages") != "assistant",
    ),
    FormatSpec(
        "prompt_only",
        "prompts",
        "prompt_only",
        'Prompt-only records {"prompt": "..."} (or a prompt messages list) for online RL.',
        frozenset({"prompt"}),
        convert_prompt_only,
        {"prompt": "Write a haiku about rain."},
    ),
    FormatSpec(
        "openai_completion",
        "sft",
        "openai_completion",
        "Legacy OpenAI prompt/completion pairs; the prompt becomes the user turn.",
        frozenset({"prompt", "completion"}),
        convert_openai_completion,
        {"prompt": "Capital of France?", "completion": "Paris."},
    ),
    FormatSpec(
        "sharegpt",
        "sft",
        "sharegpt",
        'ShareGPT / FastChat conversations: [{"from": "human"|"gpt"|"system", "value": ...}], optional '
        "top-level system prompt.",
        frozenset({"conversations"}),
        convert_sharegpt,
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        optional=frozenset({"id", "system"}),
    ),
    FormatSpec(
        "sharegpt_tools",
        "sft",
        "sharegpt",
        "LLaMA-Factory ShareGPT with tool calls (glaive): function_call/observation turns and a tools "
        "column (a JSON string of function schemas).",
        frozenset({"conversations", "tools"}),
        convert_sharegpt,
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": '{"temp": 21}'},
                {"from": "gpt", "value": "It is 21 degrees."},
            ],
            "tools": '[{"name": "weather", "description": "Current weather", "parameters": {}}]',
        },
        optional=frozenset({"system"}),
    ),
    FormatSpec(
        "kto",
        None,
        "kto",
        "LLaMA-Factory KTO: messages ending with an assistant reply plus a true/false label saying whether "
        "the reply is desirable.",
        frozenset({"messages", "label"}),
        convert_kto,
        {
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "label": True,
        },
        unsupported="KTO (unpaired desirable/undesirable labels) is not supported yet; ChatForge trains preference "
        "models from chosen/rejected pairs. Upload pairs (e.g. OpenAI DPO format), or remove the label field "
        "to use the conversations as SFT data",
    ),
]
