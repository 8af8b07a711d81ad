"""An overloaded server answers 429 with Retry-After, cheaply, and keeps serving what it admitted.

Its own API process (no worker) on the tiny model with one decode row and a waiting queue of one: a long
stream takes the row, a second waits, and a third request (chat or legacy completion) is refused with
OpenAI's 429 shape and a Retry-After header, without being rendered or tokenized (the engine's queue is
checked first, Engine.check_room). The two admitted streams then finish normally."""

from __future__ import annotations

import re
import threading
import time

import httpx2 as httpx
import openai
import pytest

from tests.support.service import start_service

LONG = 1500  # tokens: the running stream must outlast the test's requests


@pytest.fixture(scope="module")
def svc(tmp_path_factory, pg_url, tiny_model_path):
    s = start_service(tmp_path_factory.mktemp("overload"), pg_url, None, workers=0,
                      models={"tiny-llama": tiny_model_path},
                      CHATFORGE_SERVE_MAX_BATCH="1", CHATFORGE_SERVE_MAX_QUEUE="1")
    try:
        yield s
    finally:
        s.stop()


def _gauge(svc, name: str) -> float:
    text = httpx.get(f"{svc.base_url}/metrics", timeout=10).text
    values = [float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE)]
    return sum(values)


def test_a_full_queue_is_a_429_with_retry_after_and_admitted_streams_finish(svc):
    key = svc.key("overload")
    client = openai.OpenAI(base_url=svc.v1, api_key=key, max_retries=0, timeout=300)
    msgs = [{"role": "user", "content": "Count slowly."}]
    finished: dict[str, str | None] = {}

    def stream(name: str) -> None:
        s = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=LONG, temperature=0,
                                           stream=True)
        for chunk in s:
            if chunk.choices and chunk.choices[0].finish_reason:
                finished[name] = chunk.choices[0].finish_reason

    first = threading.Thread(target=stream, args=("running",))
    first.start()
    end = time.monotonic() + 120
    while _gauge(svc, "chatforge_engine_running_sequences") < 1:
        assert time.monotonic() < end, "the first stream never started"
        time.sleep(0.05)
    second = threading.Thread(target=stream, args=("waiting",))
    second.start()
    while _gauge(svc, "chatforge_engine_waiting_requests") < 1:
        assert time.monotonic() < end, "the second stream never queued"
        time.sleep(0.05)

    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{svc.v1}/chat/completions", headers=auth, timeout=60,
                   json={"model": "tiny-llama", "messages": msgs, "max_tokens": 4, "stream": True})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "engine_busy" and int(r.headers["retry-after"]) >= 1
    r = httpx.post(f"{svc.v1}/completions", headers=auth, timeout=60,
                   json={"model": "tiny-llama", "prompt": "Once upon", "max_tokens": 4})
    assert r.status_code == 429 and r.json()["error"]["code"] == "engine_busy", r.text
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=4)
    assert _gauge(svc, "chatforge_engine_running_sequences") == 1, "the running stream ended too early to test"

    first.join(timeout=300)
    second.join(timeout=300)
    assert finished == {"running": "length", "waiting": "length"}, finished
    # and the server takes new work again
    out = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=4)
    assert out.choices[0].finish_reason == "length"
