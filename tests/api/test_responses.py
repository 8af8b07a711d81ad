"""/v1/responses (OpenAI's Responses API) through the official openai SDK, sync and async, against a real
server: the same generation path as chat completions, typed stream events, conversation state in the
database, per-project isolation.

The stock tiny model never emits its end-of-turn token, so its greedy replies end "incomplete" at
max_output_tokens; SmolLM2 answers (and stops) where a test needs a real conversation.
"""

import asyncio
import json

import jsonschema
import openai
import pydantic
import pytest

SAY = "Say hello to the world."
CAPITAL = "What is the capital of France?"
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
SMOL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "strict": True, "parameters": {
               "type": "object", "additionalProperties": False, "required": ["city", "unit"],
               "properties": {"city": {"type": "string", "maxLength": 40},
                              "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}
TIME = {"type": "function", "name": "get_time", "description": "Get the local time in a city", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                       "properties": {"city": {"type": "string", "maxLength": 40}}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}
ASK = "What is the weather like in Paris today?"
CHAT_TOOLS = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")}}
              for t in TOOLS]
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


def _text_stream_types(n_deltas: int, final: str) -> list[str]:
    return TEXT_EVENTS + ["response.output_text.delta"] * n_deltas + TEXT_END + [final]


def test_stream_events_in_order(client_a):
    events = list(client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=6, temperature=0,
                                            stream=True))
    n_deltas = sum(e.type == "response.output_text.delta" for e in events)
    assert n_deltas >= 1
    assert [e.type for e in events] == _text_stream_types(n_deltas, "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == final.id
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert len(item_ids) == 1 and final.output[0].id in item_ids
    assert text == final.output_text == events[-4].text
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 6
    whole = client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=6, temperature=0)
    assert whole.output_text == text
    assert client_a.responses.retrieve(final.id).output_text == text  # stored before the last event


def test_stream_helper_completes_with_smollm2(client_a):
    """client.responses.stream(...) folds the events itself; a reply that ends by itself is completed."""
    with client_a.responses.stream(model="smollm2-135m-instruct", input=CAPITAL,
                                   max_output_tokens=60, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.incomplete_details is None
    assert "Paris" in final.output_text and "".join(deltas) == final.output_text
    assert final.output[0].status == "completed" and final.usage.output_tokens < 60


def test_async_client_create_stream_and_retrieve(service, key_a):
    async def main():
        client = openai.AsyncOpenAI(base_url=service.v1, api_key=key_a, max_retries=0, timeout=600)
        try:
            r = await client.responses.create(model="tiny-llama", input=SAY, max_output_tokens=4, temperature=0)
            stream = await client.responses.create(model="tiny-llama", input=SAY, max_output_tokens=4,
                                                   temperature=0, stream=True)
            events = [e async for e in stream]
            async with client.responses.stream(model="smollm2-135m-instruct", input=CAPITAL,
                                               max_output_tokens=60, temperature=0) as helper:
                deltas = [e.delta async for e in helper if e.type == "response.output_text.delta"]
                helped = await helper.get_final_response()
            assert helped.status == "completed" and "".join(deltas) == helped.output_text
            again = await client.responses.retrieve(r.id)
            return r, events, helped, again
        finally:
            await client.close()

    r, events, helped, again = asyncio.run(main())
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == r.output_text
    assert "Paris" in helped.output_text
    assert again.id == r.id and again.output_text == r.output_text and again.usage == r.usage


def test_previous_response_id_continues_the_conversation(client_a):
    first = client_a.responses.create(model="tiny-llama", input="My name is Ada.", max_output_tokens=4,
                                      temperature=0)
    second = client_a.responses.create(model="tiny-llama", input="What is my name?", max_output_tokens=4,
                                       temperature=0, previous_response_id=first.id)
    assert second.previous_response_id == first.id
    history = [{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": first.output_text},
               {"role": "user", "content": "What is my name?"}]
    chat = client_a.chat.completions.create(model="tiny-llama", messages=history, max_tokens=4, temperature=0)
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    assert second.output_text == chat.choices[0].message.content
    items = list(client_a.responses.input_items.list(second.id, order="asc"))
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant"),
                                                 ("message", "user")]
    assert items[0].content[0].text == "My name is Ada." and items[1].id == first.output[0].id
    assert items[1].content[0].text == first.output_text and items[2].content[0].text == "What is my name?"
    newest_first = list(client_a.responses.input_items.list(second.id))
    assert [i.id for i in newest_first] == [i.id for i in reversed(items)]
    page = client_a.responses.input_items.list(second.id, order="asc", limit=2)
    assert [i.id for i in page.data] == [i.id for i in items[:2]] and page.has_more
    assert [i.id for i in page.get_next_page().data] == [items[2].id]


def test_smollm2_remembers_a_fact_from_the_previous_turn(client_a):
    first = client_a.responses.create(model="smollm2-135m-instruct", temperature=0, max_output_tokens=30,
                                      input="The secret password is PINEAPPLE.")
    second = client_a.responses.create(model="smollm2-135m-instruct", temperature=0, max_output_tokens=30,
                                       input="What is the secret password?", previous_response_id=first.id)
    assert "pineapple" in second.output_text.lower()
    alone = client_a.responses.create(model="smollm2-135m-instruct", temperature=0, max_output_tokens=30,
                                      input="What is the secret password?")
    assert "pineapple" not in alone.output_text.lower()


def test_instructions_are_not_carried_over(client_a):
    first = client_a.responses.create(model="tiny-llama", input="Hi", instructions="Be brief.",
                                      max_output_tokens=3, temperature=0)
    second = client_a.responses.create(model="tiny-llama", input="Again", max_output_tokens=3, temperature=0,
                                       previous_response_id=first.id)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.output_text},
               {"role": "user", "content": "Again"}]
    chat = client_a.chat.completions.create(model="tiny-llama", messages=history, max_tokens=3, temperature=0)
    assert second.usage.input_tokens == chat.usage.prompt_tokens and second.instructions is None


def test_store_false_is_neither_retrievable_nor_continuable(client_a):
    r = client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=3, temperature=0, store=False)
    assert r.store is False and r.output_text
    with pytest.raises(openai.NotFoundError):
        client_a.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client_a.responses.create(model="tiny-llama", input="more", previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"
    streamed = list(client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=3, store=False,
                                              stream=True))
    with pytest.raises(openai.NotFoundError):
        client_a.responses.retrieve(streamed[-1].response.id)


def test_another_projects_response_is_404_everywhere(client_a, client_b):
    r = client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=3, temperature=0,
                                  metadata={"topic": "greeting"})
    assert client_a.responses.retrieve(r.id).metadata == {"topic": "greeting"}
    with pytest.raises(openai.NotFoundError):
        client_b.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client_b.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        client_b.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client_b.responses.create(model="tiny-llama", input="hi", previous_response_id=r.id)
    assert client_a.responses.retrieve(r.id).id == r.id  # untouched by b's delete


def test_delete(client_a):
    r = client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=3, temperature=0)
    assert client_a.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError):
        client_a.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client_a.responses.delete(r.id)


def test_message_items_and_content_parts_as_input(client_a):
    r = client_a.responses.create(model="tiny-llama", max_output_tokens=4, temperature=0, input=[
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say "},
                                                          {"type": "input_text", "text": "hello."}]},
    ])
    msgs = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Say hello."}]
    assert r.output_text == _chat_text(client_a, msgs, 4)


def test_unsupported_and_invalid_requests_are_400_naming_them(client_a):
    cases = [({"reasoning": {"effort": "high"}}, "reasoning"),
             ({"background": True}, "background"),
             ({"truncation": "auto"}, "truncation"),
             ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
             ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
              "input[0].content[0].type"),
             ({"temperature": 3}, "temperature"),
             ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema")]
    for extra, param in cases:
        kw = {"model": "tiny-llama", "input": SAY, **extra}
        with pytest.raises(openai.BadRequestError) as e:
            client_a.responses.create(**kw)
        assert e.value.body["param"] == param, (extra, e.value.body)
    with pytest.raises(openai.NotFoundError):
        client_a.responses.create(model="no-such-model", input=SAY)


def _check_call(item) -> None:
    assert item.type == "function_call" and item.call_id.startswith("call_") and item.id.startswith("fc_")
    assert item.status == "completed"
    jsonschema.validate(json.loads(item.arguments), SCHEMAS[item.name])


def test_function_tool_call_then_its_output_continues(client_a):
    r = client_a.responses.create(model=SMOL, input=ASK, tools=TOOLS, tool_choice="required", temperature=0,
                                  max_output_tokens=120, parallel_tool_calls=False)
    assert r.status == "completed" and r.output_text == ""
    [call] = r.output
    _check_call(call)
    chat = client_a.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": ASK}],
                                            tools=CHAT_TOOLS, tool_choice="required", temperature=0,
                                            max_tokens=120, parallel_tool_calls=False)
    same = chat.choices[0].message.tool_calls[0].function  # the same generation path
    assert (same.name, same.arguments) == (call.name, call.arguments)
    assert r.usage.input_tokens == chat.usage.prompt_tokens

    result = json.dumps({"temperature": 18, "sky": "sunny"})
    answer = client_a.responses.create(model=SMOL, previous_response_id=r.id, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_output_tokens=40,
                                       input=[{"type": "function_call_output", "call_id": call.call_id,
                                               "output": result}])
    assert answer.output[0].type == "message" and answer.output_text
    items = list(client_a.responses.input_items.list(answer.id, order="asc"))
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == call.call_id and items[2].output == result
    # the same conversation sent as items, without stored state, answers the same
    explicit = client_a.responses.create(model=SMOL, tools=TOOLS, tool_choice="none", temperature=0,
                                         max_output_tokens=40, input=[
                                             {"role": "user", "content": ASK},
                                             {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                              "arguments": call.arguments},
                                             {"type": "function_call_output", "call_id": call.call_id,
                                              "output": result}])
    assert explicit.output_text == answer.output_text
    assert explicit.usage.input_tokens == answer.usage.input_tokens
    history = [{"role": "user", "content": ASK},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call.call_id, "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments}}]},
               {"role": "tool", "tool_call_id": call.call_id, "content": result}]
    final = client_a.chat.completions.create(model=SMOL, messages=history, tools=CHAT_TOOLS, tool_choice="none",
                                             temperature=0, max_tokens=40)
    assert final.choices[0].message.content == answer.output_text


def test_function_call_streamed_events(client_a):
    events = list(client_a.responses.create(model=SMOL, input=ASK, tools=TOOLS, tool_choice="required",
                                            temperature=0, max_output_tokens=120, parallel_tool_calls=False,
                                            stream=True))
    types = [e.type for e in events]
    n = types.count("response.function_call_arguments.delta")
    assert n > 2  # arguments arrive in several pieces
    assert types == ["response.created", "response.in_progress", "response.output_item.added"] + \
        ["response.function_call_arguments.delta"] * n + \
        ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, done, final = events[2].item, events[-2].item, events[-1].response
    assert added.type == "function_call" and added.arguments == "" and added.status == "in_progress"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == events[-3].arguments == done.arguments == final.output[0].arguments
    assert added.id == done.id == final.output[0].id and added.call_id == done.call_id
    _check_call(final.output[0])
    with client_a.responses.stream(model=SMOL, input=ASK, tools=TOOLS, tool_choice="required", temperature=0,
                                   max_output_tokens=120, parallel_tool_calls=False) as stream:
        helped = stream.get_final_response()
    [call] = helped.output
    assert call.arguments == args and call.parsed_arguments == json.loads(args)  # strict tools are parsed


def test_named_tool_choice_async(service, key_a):
    async def main():
        client = openai.AsyncOpenAI(base_url=service.v1, api_key=key_a, max_retries=0, timeout=600)
        try:
            return [await client.responses.create(model=SMOL, input=ASK, tools=TOOLS, temperature=1.0,
                                                  max_output_tokens=120,
                                                  tool_choice={"type": "function", "name": "get_time"})
                    for _ in range(2)]
        finally:
            await client.close()

    for r in asyncio.run(main()):
        assert [i.name for i in r.output] == ["get_time"] and r.tool_choice.name == "get_time"
        for item in r.output:
            _check_call(item)


class City(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)


def test_text_format_json_schema_returns_valid_json(client_a):
    schema = City.model_json_schema() | {"additionalProperties": False}
    r = client_a.responses.create(model=SMOL, input="Name a big city and its country.", temperature=0,
                                  max_output_tokens=60, text={"format": {"type": "json_schema", "name": "city",
                                                                          "schema": schema, "strict": True}})
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), schema)
    parsed = client_a.responses.parse(model=SMOL, input="Name a big city and its country.", temperature=0,
                                      max_output_tokens=60, text_format=City)
    assert isinstance(parsed.output_parsed, City)
    assert parsed.output_parsed.model_dump() == json.loads(r.output_text)
    streamed = list(client_a.responses.create(model=SMOL, input="Name a big city and its country.",
                                              temperature=0, max_output_tokens=60, stream=True,
                                              text={"format": {"type": "json_schema", "name": "city",
                                                               "schema": schema, "strict": True}}))
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == r.output_text
    obj = client_a.responses.create(model=SMOL, input="Describe Paris as a JSON object.", temperature=0,
                                    max_output_tokens=80, text={"format": {"type": "json_object"}})
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)


def test_schema_problems_name_the_responses_field(client_a):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as e:
        client_a.responses.create(model="tiny-llama", input=SAY,
                                  text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert e.value.body["param"] == "text.format.schema.properties.tags.uniqueItems"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.responses.create(model="tiny-llama", input=SAY, tools=TOOLS,
                                  tool_choice={"type": "function", "name": "nope"})
    assert e.value.body["param"] == "tool_choice"


def test_max_output_tokens_past_the_context_names_it(client_a):
    with pytest.raises(openai.BadRequestError) as e:
        client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=5000)
    err = e.value.body
    assert err["param"] == "max_output_tokens" and err["code"] == "context_length_exceeded", err
    assert "max_tokens" not in err["message"] and "max_output_tokens (5000)" in err["message"], err


def test_unknown_keys_are_refused_in_openais_words(client_a):
    """As on /v1/chat/completions: a key nobody defines is a 400 naming it, never silently ignored."""
    for extra in ({"frobnicate": 1}, {"max_tokens": 4}, {"temprature": 0}):
        with pytest.raises(openai.BadRequestError) as e:
            client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=2, extra_body=extra)
        (key,) = extra
        err = e.value.body
        assert err["message"] == f"Unrecognized request argument supplied: {key}", err
        assert err["param"] == key and err["code"] == "unknown_parameter", err
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's, not implemented here: says why
        client_a.responses.create(model="tiny-llama", input=SAY, max_output_tokens=2, moderation={"model": "x"})
    assert e.value.body["param"] == "moderation" and e.value.body["code"] == "unsupported_parameter"


def test_the_sdks_no_op_parameters_are_accepted(client_a):
    r = client_a.responses.create(
        model="tiny-llama", input=SAY, max_output_tokens=2, user="u-1", service_tier="auto",
        safety_identifier="s-1", prompt_cache_key="k-1", prompt_cache_retention="24h", metadata={"a": "b"},
        truncation="disabled", parallel_tool_calls=True, store=False)
    assert r.usage.output_tokens == 2
    with client_a.responses.stream(model="tiny-llama", input=SAY, max_output_tokens=2) as stream:
        events = list(stream)  # the tiny model never stops by itself: the reply ends at max_output_tokens
    assert events[-1].type == "response.incomplete" and events[-1].response.usage.output_tokens == 2


def test_cached_tokens_count_the_prefix_the_engine_reused(service, client_a):
    from tests.api.test_chat import _long_system_prompt, metric

    instructions = _long_system_prompt()
    before = metric(service, "chatforge_engine_prefix_tokens_reused", base_model="tiny-llama")
    first = client_a.responses.create(model="tiny-llama", instructions=instructions, input="First question?",
                                      max_output_tokens=2, temperature=0)
    assert first.usage.input_tokens_details.cached_tokens == 0
    mid = metric(service, "chatforge_engine_prefix_tokens_reused", base_model="tiny-llama")
    assert mid == before
    second = client_a.responses.create(model="tiny-llama", instructions=instructions, input="Another one?",
                                       max_output_tokens=2, temperature=0)
    cached = second.usage.input_tokens_details.cached_tokens
    reused = metric(service, "chatforge_engine_prefix_tokens_reused", base_model="tiny-llama") - mid
    assert 0 < cached < second.usage.input_tokens and cached == reused
    assert client_a.responses.retrieve(second.id).usage.input_tokens_details.cached_tokens == cached
