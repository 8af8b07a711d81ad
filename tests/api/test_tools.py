"""Tool calling on /v1/chat/completions through the official openai SDK (sync and async), on the real
SmolLM2 base model: forced calls (required / named) always parse and validate against the tool's schema,
streamed as OpenAI tool_calls deltas; a full round trip; and the ChatForge tool format renders a
training conversation exactly as serving renders and parses it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import openai
import pytest

from ml.data.render import IGNORE_INDEX, render_conversation, render_prompt
from ml.records import Conversation
from ml.serve.tools import parse_tool_calls

SAMPLE = Path(__file__).parents[1] / "fixtures" / "samples" / "openai_chat_toolcall_train.jsonl"
MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"]},
    },
}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _check_calls(calls) -> None:
    assert calls
    for c in calls:
        assert c.id.startswith("call_") and c.type == "function"
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def test_required_tool_call(client_a):
    r = client_a.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                         temperature=0, max_tokens=120, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1 and not choice.message.content
    _check_calls(choice.message.tool_calls)


def test_named_tool_call_sampled(client_a):
    for seed in range(3):
        r = client_a.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=120,
            tool_choice={"type": "function", "function": {"name": "get_time"}})
        calls = r.choices[0].message.tool_calls
        assert [c.function.name for c in calls] == ["get_time"]
        _check_calls(calls)


def test_required_tool_call_streamed(client_a):
    stream = client_a.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                              temperature=0, max_tokens=120, parallel_tool_calls=False,
                                              stream=True)
    calls: dict[int, dict] = {}
    pieces, finish = 0, None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None and tc.function.name  # id and name come once, first
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["arguments"] += tc.function.arguments or ""
            pieces += 1
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and pieces > 2  # arguments arrive in several chunks
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    # the stream folds to the same call as the non-streamed reply (greedy)
    r = client_a.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                         temperature=0, max_tokens=120, parallel_tool_calls=False)
    same = r.choices[0].message.tool_calls[0].function
    assert (same.name, same.arguments) == (call["name"], call["arguments"])


def test_async_client_round_trip(service, key_a):
    async def main():
        c = openai.AsyncOpenAI(base_url=service.v1, api_key=key_a, max_retries=0, timeout=600)
        first = await c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0,
                                                tool_choice="required", max_tokens=120, parallel_tool_calls=False)
        msg = first.choices[0].message
        _check_calls(msg.tool_calls)
        call = msg.tool_calls[0]
        history = ASK + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
        ]
        final = await c.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0,
                                                tool_choice="none", max_tokens=40)
        answer = final.choices[0]
        assert answer.finish_reason in ("stop", "length") and answer.message.content
        assert not answer.message.tool_calls
        # streamed, with tool_choice auto: the reply is text or calls, never a half-parsed block
        stream = await c.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0,
                                                 max_tokens=40, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert "<tool_call>" not in text or "</tool_call>" not in text
        await c.close()
        return answer.message.content

    assert asyncio.run(main())


def test_tool_request_errors_name_the_field(client_a):
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                         tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model=MODEL, messages=ASK, tools=[bad], tool_choice="required")
    assert e.value.body["param"] == "tools[0].function.parameters.not"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required")
    assert e.value.body["param"] == "tool_choice"


def test_training_render_is_what_serving_renders_and_parses(smollm2_path):
    """render(train) == render(serve): the prompt part has the same tokens, and the trained assistant span
    is exactly the text the serving parser turns back into the same tool calls."""
    from ml.models import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    lines = SAMPLE.read_text().splitlines()
    checked = 0
    for line in lines[:20]:
        rec = json.loads(line)
        conv = Conversation.from_dict(rec)
        train = render_conversation(tok, conv)
        for k, m in enumerate(rec["messages"]):
            if m["role"] != "assistant":
                continue
            prompt = render_prompt(tok, rec["messages"][:k], tools=rec.get("tools"))
            assert train.input_ids[: len(prompt)] == prompt
            # the learned tokens right after the prompt: the assistant turn and its end-of-turn token
            j = len(prompt)
            while j < len(train.labels) and train.labels[j] != IGNORE_INDEX:
                j += 1
            learned = tok.decode(train.input_ids[len(prompt) : j], skip_special_tokens=False)
            assert learned.endswith("<|im_end|>")
            content, calls = parse_tool_calls(learned[: -len("<|im_end|>")],
                                              {t["function"]["name"] for t in rec.get("tools", [])})
            want = m.get("tool_calls") or []
            assert [(c.name, json.loads(c.arguments)) for c in calls] == [
                (w["function"]["name"], json.loads(w["function"]["arguments"])) for w in want]
            assert (content or None) == (m.get("content") or None)
            checked += 1
    assert checked >= 20
