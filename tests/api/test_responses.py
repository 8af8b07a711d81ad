"""/v1/responses (OpenAI's Responses API) through the official openai SDK, sync and async, against a real
server: the same generation path as chat completions, typed stream events, conversation state in the
database, per-project isolation.

The stock tiny model never emits its end-of-turn token, so its greedy replies end "incomplete" at
max_output_tokens; SmolLM2 answers (and stops) where a test needs a real conversation.
"""

import asyncio
import json

import openai
import pytest

SAY = "Say hello to the world."
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def _chat_text(client, messages, n: int) -> str:
    r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=n, temperature=0)
    return r.choices[0].message.content


def test_create_answers_what_chat_completions_answers(client_a):
    r = client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=6, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny-llama"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 6 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    [msg] = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.content[0].type == "output_text"
    assert r.output_text == msg.content[0].text == _chat_text(client_a, [{"role": "user", "content": SAY}], 6)
    chat = client_a.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": SAY}],
                                            max_tokens=6, temperature=0)
    assert r.usage.input_tokens == chat.usage.prompt_tokens


def test_instructions_are_a_system_message(client_a):
    r = client_a.responses.create(model="tiny-llama", input=SAY, instructions="You are terse.",
                                  max_output_tokens=5, temperature=0)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": SAY}]
    assert r.output_text == _chat_text(client_a, msgs, 5)
    assert r.instructions == "You are terse."
