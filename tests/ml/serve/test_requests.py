"""Request-level behaviour: stop strings, length, seeds, penalties, logprobs, cancel, limits, async."""

from __future__ import annotations

import asyncio

import pytest
import torch

from ml.serve import (
    EngineBusy,
    GenerationRequest,
    InvalidRequest,
    RequestTooLarge,
    UnknownAdapter,
)


def req(prompt, **kw) -> GenerationRequest:
    kw.setdefault("max_tokens", 24)
    return GenerationRequest(prompt, **kw)


def test_max_tokens_gives_length_and_usage(make_engine, prompts):
    eng = make_engine()
    events = list(eng.submit(req(prompts[0], max_tokens=7, temperature=0, stop_token_ids=[])))
    assert [ev.finish_reason for ev in events] == [None] * 6 + ["length"]
    assert all(len(ev.token_ids) == 1 for ev in events)
    assert events[-1].usage.prompt_tokens == len(prompts[0])
    assert events[-1].usage.completion_tokens == 7


def test_stop_token_ends_with_stop(make_engine, prompts):
    eng = make_engine()
    free = eng.generate(req(prompts[1], temperature=0, stop_token_ids=[]))
    stopper = free.token_ids[5]
    first = free.token_ids.index(stopper)
    out = eng.generate(req(prompts[1], temperature=0, stop_token_ids=[stopper]))
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: first + 1]
    assert out.text == eng.tokenizer.decode(free.token_ids[:first], skip_special_tokens=True)


def test_stop_strings_are_matched_on_text_and_never_emitted(make_engine, prompts):
    eng = make_engine()
    free = eng.generate(req(prompts[3], max_tokens=40, temperature=0, stop_token_ids=[]))
    text = free.text
    assert len(text) > 30
    stop = text[12:17]  # usually spans a token boundary
    cut = text.find(stop)
    events = list(
        eng.submit(req(prompts[3], max_tokens=40, temperature=0, stop_token_ids=[], stop=["§never", stop]))
    )
    streamed = "".join(ev.text for ev in events)
    assert streamed == text[:cut]
    assert events[-1].finish_reason == "stop"
    assert all(stop not in ev.text for ev in events)
    # a stop string that never appears changes nothing
    same = eng.generate(req(prompts[3], max_tokens=40, temperature=0, stop_token_ids=[], stop=["§never"]))
    assert same.text == text and same.finish_reason == "length"


def test_same_seed_same_text_even_in_a_different_batch(make_engine, prompts):
    eng = make_engine()
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_tokens": 30, "stop_token_ids": []}
    alone = eng.generate(req(prompts[1], **sampled))
    crowd = [eng.submit(req(p, temperature=1.0, max_tokens=30)) for p in prompts]
    again = eng.submit(req(prompts[1], **sampled))
    assert again.result(timeout=120).token_ids == alone.token_ids
    for h in crowd:
        h.result(timeout=120)
    other = eng.generate(req(prompts[1], **{**sampled, "seed": 99}))
    assert other.token_ids != alone.token_ids
    greedy = eng.generate(req(prompts[1], temperature=0, max_tokens=30, stop_token_ids=[]))
    assert alone.token_ids != greedy.token_ids  # it really sampled


def test_tiny_top_p_is_greedy(make_engine, prompts):
    eng = make_engine()
    greedy = eng.generate(req(prompts[2], temperature=0))
    nucleus = eng.generate(req(prompts[2], temperature=1.5, top_p=1e-6, seed=5))
    assert nucleus.token_ids == greedy.token_ids


def test_penalties_follow_the_openai_formula(make_engine, tiny_model_path, prompts):
    """Greedy with presence/frequency penalties equals a step-by-step reference on HF logits. The
    stock tiny model repeats one token, so the penalties must change its output."""
    from ml.models import load_causal_lm

    eng = make_engine(path=tiny_model_path)
    p, n, pres, freq = prompts[0], 16, 0.7, 1.3
    out = eng.generate(
        req(p, max_tokens=n, temperature=0, presence_penalty=pres, frequency_penalty=freq, stop_token_ids=[])
    )
    model = load_causal_lm(tiny_model_path).eval()
    ids, counts = list(p), torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            tok = int(torch.argmax(logits - freq * counts - pres * (counts > 0).float()))
            counts[tok] += 1
            ids.append(tok)
    assert out.token_ids == ids[len(p) :]
    plain = eng.generate(req(p, max_tokens=n, temperature=0, stop_token_ids=[])).token_ids
    assert len(set(plain)) < len(set(out.token_ids))


def test_logprobs_shape_and_values(make_engine, reference, prompts):
    eng = make_engine()
    p = prompts[0]
    events = list(eng.submit(req(p, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)))
    lps = [lp for ev in events for lp in ev.logprobs]
    assert len(lps) == 6
    ids = list(p)
    model = reference.model(None)
    for lp in lps:
        assert len(lp.top) == 5
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0][0] == lp.token_id and lp.top[0][1] == pytest.approx(lp.logprob)
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        assert lp.logprob == pytest.approx(float(want[lp.token_id]), abs=1e-4)
        ids.append(lp.token_id)
    plain = eng.generate(req(p, max_tokens=3, temperature=0))
    assert plain.logprobs is None


def test_cancel_frees_the_slot(make_engine, prompts):
    eng = make_engine(max_batch_size=1)
    long = eng.submit(req(prompts[1], max_tokens=400, temperature=0, stop_token_ids=[]))
    long.get(timeout=60)
    queued = eng.submit(req(prompts[0], max_tokens=5, temperature=0))
    long.cancel()
    assert queued.result(timeout=60).finish_reason in ("length", "stop")
    rest = long.result(timeout=60)
    assert rest.finish_reason == "cancelled"
    assert rest.usage.completion_tokens < 400
    st = eng.stats()
    assert st.running == 0 and st.finished_by_reason["cancelled"] == 1


def test_cancel_while_waiting(make_engine, prompts):
    eng = make_engine(start=False)
    h = eng.submit(req(prompts[0]))
    h.cancel()
    eng.start()
    assert h.result(timeout=60).finish_reason == "cancelled"


def test_queue_limit_and_size_limits(make_engine, prompts):
    eng = make_engine(start=False, max_queue=2, max_total_tokens=64, max_prompt_tokens=40)
    eng.submit(req(prompts[0], max_tokens=4))
    eng.check_room(1)
    with pytest.raises(EngineBusy):
        eng.check_room(2)  # the API's peek before it tokenizes a prompt: two choices would not fit
    eng.submit(req(prompts[0], max_tokens=4))
    with pytest.raises(EngineBusy):
        eng.check_room()
    with pytest.raises(EngineBusy):
        eng.submit(req(prompts[0], max_tokens=4))
    with pytest.raises(RequestTooLarge):
        eng.submit(req(list(range(41)), max_tokens=1))
    with pytest.raises(RequestTooLarge):
        eng.submit(req(prompts[0], max_tokens=64))
    with pytest.raises(UnknownAdapter):
        eng.submit(req(prompts[0], adapter="nope"))
    with pytest.raises(InvalidRequest):
        eng.submit(req(prompts[0], stop=["a", "b", "c", "d", "e"]))
    assert eng.stats().waiting == 2


def test_no_max_tokens_fills_the_context(make_engine, prompts):
    eng = make_engine(max_total_tokens=64)
    out = eng.generate(GenerationRequest(prompts[0], temperature=0, stop_token_ids=[]))
    assert out.finish_reason == "length"
    assert out.usage.total_tokens == 64


def test_async_iteration(make_engine, prompts):
    eng = make_engine()

    async def consume():
        hs = [eng.submit(req(p, temperature=0, max_tokens=10)) for p in prompts]
        outs = []
        for h in hs:
            evs = [ev async for ev in h]
            outs.append(evs)
        return outs

    outs = asyncio.run(consume())
    for p, evs in zip(prompts, outs):
        assert evs[-1].finish_reason is not None
        sync = eng.generate(req(p, temperature=0, max_tokens=10))
        assert [t for ev in evs for t in ev.token_ids] == sync.token_ids
        assert "".join(ev.text for ev in evs) == sync.text


def test_stats_count_tokens(make_engine, prompts):
    eng = make_engine()
    eng.generate(req(prompts[0], max_tokens=5, temperature=0, stop_token_ids=[]))
    eng.generate(req(prompts[1], max_tokens=3, temperature=0, stop_token_ids=[]))
    st = eng.stats()
    assert st.generated_tokens_total == 8
    assert st.prompt_tokens_total == len(prompts[0]) + len(prompts[1])
    assert st.requests_finished_total == 2 and st.running == 0 and st.waiting == 0
    stopper = eng.generate(req(prompts[1], max_tokens=3, temperature=0, stop_token_ids=[])).token_ids[0]
    eng.generate(req(prompts[1], max_tokens=3, temperature=0, stop_token_ids=[stopper]))
    gone = eng.submit(req(prompts[0]))
    gone.cancel()
    assert gone.result(timeout=60).finish_reason == "cancelled"
    assert eng.stats().finished_by_reason == {"length": 3, "stop": 1, "cancelled": 1}


def test_a_failing_step_fails_its_requests_and_the_engine_lives_on(make_engine, reference, prompts):
    eng = make_engine(start=False)
    real_forward = eng.runner.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):  # a fault we cannot cause for real (e.g. out of memory)
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated kernel failure")
        return real_forward(*args, **kwargs)

    eng.runner.forward = flaky_forward
    doomed = eng.submit(req(prompts[0], temperature=0))
    eng.start()
    out = doomed.result(timeout=60)
    assert out.finish_reason == "error" and "simulated" in out.error
    assert eng.generate(req(prompts[0], temperature=0)).token_ids == reference.greedy(prompts[0], 24)
    assert eng.stats().running == 0


def test_close_answers_everything_outstanding(make_engine, prompts):
    eng = make_engine(start=False)
    waiting = eng.submit(req(prompts[0]))
    eng.close()
    assert waiting.result(timeout=10).finish_reason == "error"
    running_engine = make_engine(max_batch_size=1)
    busy = running_engine.submit(req(prompts[1], max_tokens=400, stop_token_ids=[]))
    queued = running_engine.submit(req(prompts[0]))
    busy.get(timeout=60)
    running_engine.close()
    assert busy.result(timeout=10).finish_reason == "error"
    assert queued.result(timeout=10).finish_reason == "error"


def test_abandoned_async_stream_cancels_the_request(make_engine, prompts):
    eng = make_engine(max_batch_size=1)

    async def disconnecting_client():
        h = eng.submit(req(prompts[1], max_tokens=400, stop_token_ids=[]))

        first = asyncio.Event()

        async def stream():
            async for _ in h:
                first.set()

        task = asyncio.ensure_future(stream())
        await first.wait()
        task.cancel()  # what Starlette does when the SSE client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        return h

    h = asyncio.run(disconnecting_client())
    assert h.cancelled
    out = h.result(timeout=60)
    assert out.finish_reason == "cancelled" and out.usage.completion_tokens < 400
    after = eng.generate(req(prompts[0], max_tokens=3, temperature=0))  # the slot is free again
    assert after.finish_reason in ("length", "stop")


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_only_where_the_hardware_has_it(make_engine, monkeypatch, native):
    """"auto" (the API's default) serves in bfloat16 where bf16 matmuls are native, float32 where they would
    be emulated (AVX2-only CPUs decode several times slower in bf16)."""
    import ml.models

    monkeypatch.setattr(ml.models, "bf16_is_native", lambda device="cpu": native)
    eng = make_engine(dtype="auto")
    assert eng.torch_dtype == (torch.bfloat16 if native else torch.float32)
    assert next(eng.model.parameters()).dtype == eng.torch_dtype
    assert eng.generate(GenerationRequest([1, 2, 3], max_tokens=3, temperature=0)).finish_reason == "length"
