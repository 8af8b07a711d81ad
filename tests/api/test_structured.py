"""Structured outputs on /v1/chat/completions through the official SDK: response_format json_schema
(client.chat.completions.parse with a pydantic model), json_object, streamed and not."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import jsonschema
import openai
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"


class Mood(str, Enum):
    happy = "happy"
    sad = "sad"
    neutral = "neutral"


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=130)
    mood: Mood
    # bounded items: greedy decoding of a 135M model can repeat itself inside an unbounded string
    # ("garden-garden-..."), and the grammar's bound is what makes it close the string
    hobbies: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


def test_parse_returns_a_pydantic_object(client_a):
    r = client_a.chat.completions.parse(
        model=MODEL, temperature=0, max_tokens=150, response_format=Person,
        messages=[{"role": "user", "content": "Describe Alice, a 31 year old cheerful gardener, as JSON."}])
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 130
    assert person == Person.model_validate_json(choice.message.content)


def test_json_schema_streamed_and_sampled(client_a):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "population": {"type": "integer", "minimum": 0}},
              "required": ["city", "population"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    msgs = [{"role": "user", "content": "Name a big city and its population."}]
    for seed in range(2):
        stream = client_a.chat.completions.create(model=MODEL, messages=msgs, response_format=fmt, stream=True,
                                                  temperature=1.0, seed=seed, max_tokens=80)
        text, finish = "", None
        for ch in stream:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
                finish = ch.choices[0].finish_reason or finish
        assert finish == "stop"
        jsonschema.validate(json.loads(text), schema)


def test_json_object(client_a):
    r = client_a.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a JSON object with your name."}])
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:
        assert c.message.content.lstrip().startswith("{")


def test_tools_and_response_format_conflict_is_named(client_a):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    try:
        client_a.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[tool],
                                         response_format={"type": "json_object"})
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format"
    else:
        raise AssertionError("expected a 400")
