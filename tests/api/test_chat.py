"""/v1/chat/completions and /v1/completions through the official openai SDK against a real server."""

import asyncio
import json

import httpx2 as httpx
import openai
import pytest

MSG = [{"role": "user", "content": "Say hello to the world."}]


def test_non_streaming_greedy(client_a):
    r = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_max_tokens_gives_length(client_a):
    r = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=3, temperature=0,
                                         stop=None, extra_body={})
    # the random tiny model rarely emits <|im_end|> within 3 tokens
    assert r.choices[0].finish_reason in ("length", "stop")
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 3


def test_streaming_chunks_have_openai_shape(client_a):
    stream = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=6, temperature=0,
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=6, temperature=0)
    assert text == whole.choices[0].message.content


def test_raw_sse_ends_with_done(service, key_a):
    with httpx.stream("POST", service.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key_a}"},
                      json={"model": "tiny-llama", "messages": MSG, "max_tokens": 4, "stream": True},
                      timeout=120) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    json.loads(lines[0][6:])


def test_seed_and_n(client_a):
    kw = dict(model="tiny-llama", messages=MSG, max_tokens=8, temperature=1.0, seed=1234)
    a = client_a.chat.completions.create(**kw)
    b = client_a.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    two = client_a.chat.completions.create(**{**kw, "n": 2})
    assert [c.index for c in two.choices] == [0, 1]


def test_stop_sequence_is_not_emitted(client_a):
    base = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=12, temperature=0)
    text = base.choices[0].message.content
    if len(text) < 4:
        pytest.skip("tiny model produced too little text to cut")
    stop = text[2:4]
    cut = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=12, temperature=0,
                                           stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].message.content
    assert text.startswith(cut.choices[0].message.content)


def test_logprobs(client_a):
    r = client_a.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_bad_parameters_are_400_naming_them(client_a):
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model="tiny-llama", messages=MSG, temperature=5)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model="tiny-llama", messages=MSG, stop=["a", "b", "c", "d", "e"])
    assert "stop" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model="tiny-llama", messages=MSG, logit_bias={"1": 5})
    assert "logit_bias" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client_a.chat.completions.create(model="tiny-llama", messages=MSG, response_format={"type": "json_object"})
    assert "response_format" in str(e.value)


def test_unknown_model_is_404(client_a):
    with pytest.raises(openai.NotFoundError):
        client_a.chat.completions.create(model="nope", messages=MSG)


def test_legacy_completions(client_a):
    r = client_a.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 5
    chunks = list(client_a.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=5,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_client_disconnect_frees_the_slot(service, key_a):
    """Abandon a long stream after two chunks; the server keeps serving and the slot is released."""
    with httpx.stream("POST", service.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key_a}"},
                      json={"model": "tiny-llama", "messages": MSG, "max_tokens": 2000, "stream": True,
                            "stop": None}, timeout=120) as r:
        it = r.iter_lines()
        next(it), next(it)
    c = openai.OpenAI(base_url=service.v1, api_key=key_a, max_retries=0)
    r2 = c.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=3, temperature=0)
    assert r2.choices[0].message.content is not None
    text = httpx.get(service.base_url + "/metrics").text
    running = [line for line in text.splitlines()
               if line.startswith('chatforge_engine_running_sequences{base_model="tiny-llama"}')]
    assert running and float(running[0].split()[-1]) == 0.0


def test_async_client_concurrent(service, key_a):
    async def main():
        c = openai.AsyncOpenAI(base_url=service.v1, api_key=key_a, max_retries=0)
        rs = await asyncio.gather(*(c.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": f"count {i}"}], max_tokens=6, temperature=0)
            for i in range(4)))
        return rs
    rs = asyncio.run(main())
    assert len(rs) == 4 and all(r.choices[0].message.content is not None for r in rs)


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_base_from_registry_entry(service, client_a, tiny_model_path, quant):
    """The seed's --load_8bit, now per base model: the registry entry decides how it is served."""
    from tests.support.service import cli

    name = f"tiny-llama-{quant}"
    cli(service.env, "models", "add", name, str(tiny_model_path), "--link", "--quantization", quant,
        "--dtype", "float32")
    r = client_a.chat.completions.create(model=name, messages=MSG, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1
