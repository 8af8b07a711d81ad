"""Greedy output of the engine is token-identical to transformers generate: alone, in mixed-adapter
batches, when joining a running batch, and with chunked prefill."""

from __future__ import annotations

import pytest

from ml.serve import GenerationRequest

N = 24


def greedy(prompt, adapter=None, n=N, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, adapter=adapter, max_tokens=n, temperature=0, **kw)


def test_stock_tiny_model_matches_generate(tiny_model_path, prompts):
    import torch

    from ml.models import load_causal_lm
    from ml.serve import Engine

    ref = load_causal_lm(tiny_model_path).eval()
    with Engine(tiny_model_path, max_total_tokens=256) as eng:
        for p in prompts[:2]:
            want = ref.generate(torch.tensor([p]), max_new_tokens=N, do_sample=False, pad_token_id=0)
            assert eng.generate(greedy(p)).token_ids == want[0, len(p) :].tolist()


@pytest.mark.parametrize("adapter", [None, "alpha", "beta"])
def test_greedy_matches_generate(make_engine, reference, prompts, adapter):
    eng = make_engine()
    for p in prompts:
        out = eng.generate(greedy(p, adapter))
        assert out.token_ids == reference.greedy(p, N, adapter)
        assert out.text == eng.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_adapters_change_the_output(make_engine, prompts):
    eng = make_engine()
    outs = {a: eng.generate(greedy(prompts[1], a)).token_ids for a in (None, "alpha", "beta")}
    assert len({tuple(v) for v in outs.values()}) == 3


def test_mixed_adapter_batch_equals_each_alone(make_engine, reference, prompts):
    """Base, alpha and beta rows with different prompt lengths share every forward pass."""
    eng = make_engine(start=False)
    plan = [
        (prompts[0], "alpha"),
        (prompts[1], "beta"),
        (prompts[2], None),
        (prompts[3], "alpha"),
        (prompts[1], "alpha"),
        (prompts[3], "beta"),
    ]
    handles = [eng.submit(greedy(p, a)) for p, a in plan]
    eng.start()  # all six are admitted in the first step: one prefill batch, then shared decodes
    for (p, a), h in zip(plan, handles):
        assert h.result(timeout=120).token_ids == reference.greedy(p, N, a), (a, len(p))
    assert eng.stats().running == 0


def test_requests_joining_a_running_batch(make_engine, reference, prompts):
    eng = make_engine(max_batch_size=4)
    first = eng.submit(greedy(prompts[1], "alpha", n=40))
    events = [first.get(timeout=60) for _ in range(10)]  # first is well into its decode
    late = [eng.submit(greedy(prompts[i], a)) for i, a in ((0, "beta"), (3, None), (2, "alpha"))]
    rest = first.result(timeout=120)
    got_first = [t for ev in events for t in ev.token_ids] + rest.token_ids
    assert got_first == reference.greedy(prompts[1], 40, "alpha")
    for (i, a), h in zip(((0, "beta"), (3, None), (2, "alpha")), late):
        assert h.result(timeout=120).token_ids == reference.greedy(prompts[i], N, a)


def test_more_requests_than_rows_and_rows_being_recycled(make_engine, reference, prompts):
    """Seven requests through two rows, different lengths: rows are freed, moved and reused."""
    eng = make_engine(max_batch_size=2)
    plan = [(prompts[i % 4], (None, "alpha", "beta")[i % 3], 5 + 3 * i) for i in range(7)]
    handles = [eng.submit(greedy(p, a, n=n)) for p, a, n in plan]
    for (p, a, n), h in zip(plan, handles):
        assert h.result(timeout=120).token_ids == reference.greedy(p, n, a)


def test_chunked_prefill_matches(make_engine, reference, prompts):
    """A prompt prefilled 7 tokens at a time, while another stream decodes, gives the same tokens."""
    eng = make_engine(prefill_chunk=7)
    long_prompt = prompts[1] + prompts[3] + prompts[1]
    running = eng.submit(greedy(prompts[0], "beta", n=40))
    running.get(timeout=60)
    chunked = eng.submit(greedy(long_prompt, "alpha"))
    assert chunked.result(timeout=120).token_ids == reference.greedy(long_prompt, N, "alpha")
    assert running.result(timeout=120).finish_reason == "length"


def test_cache_growth_keeps_contents(make_engine, reference, prompts):
    """Generating past the initial KV capacity (256 positions) reallocates without losing keys."""
    eng = make_engine(max_total_tokens=512)
    p = prompts[1]
    out = eng.generate(GenerationRequest(p, max_tokens=300, temperature=0, stop_token_ids=[]))
    assert out.token_ids == reference.greedy(p, 300, eos=False)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_base_matches_generate_of_the_same_quantized_model(
    lively_model_path, prompts, quantization
):
    import torch

    from ml.models import load_causal_lm
    from ml.serve import Engine

    ref = load_causal_lm(lively_model_path, quantization=quantization).eval()
    with Engine(lively_model_path, quantization=quantization, max_total_tokens=256) as eng:
        p = prompts[1]
        want = ref.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert eng.generate(greedy(p, n=16)).token_ids == want[0, len(p) :].tolist()
