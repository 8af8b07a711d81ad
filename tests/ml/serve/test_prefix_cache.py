"""Prefix caching: requests sharing leading tokens reuse their keys and values, with greedy output
token-identical to an engine without the cache and to transformers generate; hits are counted exactly,
adapters never share blocks, and the store stays within its memory bound."""

from __future__ import annotations

import pytest
import torch

from ml.serve import Engine, GenerationRequest
from ml.serve.kv_cache import KVCache
from ml.serve.prefix_cache import PrefixCache

N = 16
B = 8  # block size of the engines under test: prompts span many blocks

SYSTEM = (
    "You are a careful assistant for a bicycle shop. Answer in two sentences, name the part you "
    "mean, never invent prices, and suggest visiting the shop for anything that needs tools."
)
QUESTIONS = ["How do I fix a flat tyre?", "What is a derailleur?", "hi", "Why does my chain squeak?"]


def greedy(prompt, adapter=None, n=N) -> GenerationRequest:
    return GenerationRequest(prompt, adapter=adapter, max_tokens=n, temperature=0)


def chat(tokenizer, messages) -> list[int]:
    from ml.data.render import render_prompt

    return render_prompt(tokenizer, messages, add_generation_prompt=True)


def expected_reuse(prompt: list[int], stored: list[list[int]]) -> int:
    """What the cache must reuse for `prompt`, given the token runs whose KV rows were written (no
    eviction): the longest common prefix with any of them, in whole blocks, leaving the last token."""
    best = 0
    for s in stored:
        n = 0
        while n < min(len(s), len(prompt)) and s[n] == prompt[n]:
            n += 1
        best = max(best, n // B * B)
    return min(best, len(prompt) - 1)


@pytest.fixture
def engines(make_engine):
    """The same engine with and without the prefix cache."""
    return make_engine(prefix_block_size=B), make_engine(prefix_cache_mb=0)


def test_shared_system_prompt(engines, reference):
    on, off = engines
    prompts = [
        chat(on.tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
        for q in QUESTIONS
    ]
    stored: list[list[int]] = []
    for p in prompts:
        want = reference.greedy(p, N)
        got = on.generate(greedy(p))
        assert got.token_ids == want == off.generate(greedy(p)).token_ids
        assert got.usage.cached_tokens == expected_reuse(p, stored)
        stored.append(p + got.token_ids[:-1])
    system_len = len(chat(on.tokenizer, [{"role": "system", "content": SYSTEM}]))
    assert all(expected_reuse(p, stored[:1]) >= system_len // B * B - B for p in prompts[1:])
    st, st_off = on.stats(), off.stats()
    reused = sum(expected_reuse(p, stored[:i]) for i, p in enumerate(prompts))
    assert st.prefix_tokens_reused_total == reused > 0
    assert st.prefill_tokens_computed_total == sum(map(len, prompts)) - reused
    assert st_off.prefill_tokens_computed_total == st.prompt_tokens_total == sum(map(len, prompts))
    assert st_off.prefix_tokens_reused_total == 0 and st_off.prefix_cache_bytes == 0


def test_concurrent_requests_with_a_shared_prefix(make_engine, reference, prompts):
    """Requests admitted in the same step all compute their prompt; later ones reuse it."""
    eng = make_engine(prefix_block_size=B, start=False)
    shared = (prompts[1] * 3)[:70]
    plan = [shared + [17 + i] * (i + 1) for i in range(4)]
    first = [eng.submit(greedy(p)) for p in plan[:2]]
    eng.start()
    outs = [h.result(timeout=120) for h in first]
    later = [eng.submit(greedy(p)) for p in plan[2:]]
    outs += [h.result(timeout=120) for h in later]
    for p, out in zip(plan, outs):
        assert out.token_ids == reference.greedy(p, N)
    assert [o.usage.cached_tokens for o in outs] == [0, 0, 70 // B * B, 70 // B * B]


def test_conversation_turn_by_turn(engines, reference):
    """Each turn's prompt begins with the previous turn's prompt and answer: both are reused."""
    on, off = engines
    messages = [{"role": "system", "content": SYSTEM}]
    stored: list[list[int]] = []
    previous: list[int] = []
    for q in QUESTIONS[:3]:
        messages.append({"role": "user", "content": q})
        p = chat(on.tokenizer, messages)
        got = on.generate(greedy(p))
        assert got.token_ids == reference.greedy(p, N) == off.generate(greedy(p)).token_ids
        assert got.usage.cached_tokens == expected_reuse(p, stored)
        if previous:  # the whole previous prompt is found again, not just the system prompt
            assert got.usage.cached_tokens >= len(previous) // B * B
        previous = p
        stored.append(p + got.token_ids[:-1])
        messages.append({"role": "assistant", "content": got.text})
    # continuing at the token level (the answer appended as generated) reuses the answer too
    p = stored[-1] + [got.token_ids[-1]] + [7, 8, 9]
    cont = on.generate(greedy(p))
    assert cont.token_ids == reference.greedy(p, N)
    assert cont.usage.cached_tokens == expected_reuse(p, stored) == len(stored[-1]) // B * B


@pytest.mark.parametrize("order", [("alpha", "beta", None), (None, "beta", "alpha")])
def test_adapters_never_share_blocks(engines, reference, prompts, order):
    """The same text under different adapters has different keys and values: no cross-adapter hit,
    and each adapter hits its own blocks."""
    on, off = engines
    text = (prompts[3] * 2)[:60]
    for adapter in order:
        first = on.generate(greedy(text, adapter))
        assert first.usage.cached_tokens == 0
        assert (
            first.token_ids
            == reference.greedy(text, N, adapter)
            == off.generate(greedy(text, adapter)).token_ids
        )
    for adapter in order:
        p = text[:50] + [40 + len(str(adapter))]
        again = on.generate(greedy(p, adapter))
        assert again.usage.cached_tokens == 48
        assert again.token_ids == reference.greedy(p, N, adapter)


def test_mixed_adapter_batch_after_a_shared_prefix(engines, reference, prompts):
    on, _ = engines
    text = (prompts[1] * 2)[:45]
    for adapter in (None, "alpha", "beta"):
        on.generate(greedy(text, adapter, n=2))
    plan = [(text + [11, 12], "beta"), (text + [13], None), (text + [14, 15, 16], "alpha")]
    handles = [on.submit(greedy(p, a)) for p, a in plan]
    for (p, a), h in zip(plan, handles):
        out = h.result(timeout=120)
        assert out.token_ids == reference.greedy(p, N, a), a
        assert out.usage.cached_tokens == 40


def test_partial_block_prefixes(engines, reference, prompts):
    """Only whole blocks are kept; a prompt ending inside a block, or equal to a stored one, still
    computes at least its last token, and a prompt diverging mid-block reuses the blocks before."""
    on, off = engines
    base = (prompts[1] * 2)[:37]  # 4 whole blocks and 5 tokens
    stored: list[list[int]] = []
    variants = [
        base,
        base,  # identical prompt: 32 positions reused, the rest (5) computed
        base[:32],  # block aligned and fully stored: 31 reused, the last token computed
        base[:20],  # ends inside a stored block
        base[:29] + [3, 4, 5],  # diverges inside the 4th block
        base[:3],  # shorter than a block
        base + [9] * 30,
    ]
    for p in variants:
        got = on.generate(greedy(p))
        assert got.token_ids == reference.greedy(p, N) == off.generate(greedy(p)).token_ids, len(p)
        assert got.usage.cached_tokens == expected_reuse(p, stored), len(p)
        stored.append(p + got.token_ids[:-1])
    assert [expected_reuse(p, stored[:i]) for i, p in enumerate(variants)][1:4] == [32, 31, 16]


def test_eviction_keeps_memory_bounded(make_engine, reference, prompts):
    eng = make_engine(prefix_block_size=B, prefix_cache_mb=1 / 16)
    cache = eng.prefixes
    assert cache.max_blocks == 16  # 4 KiB blocks: 2 layers x 2 kv heads x 8 positions x 16 x fp32 x (k, v)
    shared = (prompts[3] * 2)[:33]
    for i in range(12):
        p = [20 + i] * 10 + (prompts[1] * 2)[:40]  # distinct from the first token: no sharing
        assert eng.generate(greedy(p)).token_ids == reference.greedy(p, N)
        q = shared + [30 + i]
        out = eng.generate(greedy(q))
        assert out.token_ids == reference.greedy(q, N)
        if i:  # used every other request: least recently used blocks go first, not these
            assert out.usage.cached_tokens == 32
        st = eng.stats()
        assert st.prefix_cache_blocks <= cache.max_blocks
        assert st.prefix_cache_bytes <= cache.max_blocks * cache.block_bytes <= 1024**2 / 16
    assert cache.evicted_total > 0


def _store(layers=2, heads=2, dim=4, rows=3, block=4, blocks=3) -> tuple[KVCache, PrefixCache]:
    cache = KVCache(layers, rows, heads, dim, torch.float32, 64, initial_capacity=64)
    torch.manual_seed(0)
    cache.k.normal_()
    cache.v.normal_()
    return cache, PrefixCache(cache, block, blocks * (2 * layers * heads * block * dim * 4))


def test_store_and_load_copy_exact_rows():
    cache, pc = _store(blocks=8)
    tokens = list(range(100, 114))  # 3 whole blocks + 2
    assert pc.store("a", tokens, 14, cache, 0) == 3
    assert pc.store("a", tokens, 14, cache, 0) == 0  # already there
    assert pc.load("a", tokens, 13, cache, 2) == 12
    assert torch.equal(cache.k[:, 2, :, :12], cache.k[:, 0, :, :12])
    assert torch.equal(cache.v[:, 2, :, :12], cache.v[:, 0, :, :12])
    assert pc.load("a", tokens, 9, cache, 1) == 9  # limit inside a block
    assert torch.equal(cache.k[:, 1, :, :9], cache.k[:, 0, :, :9])
    assert pc.load("b", tokens, 13, cache, 1) == 0  # another adapter
    assert pc.load("a", [0] + tokens[1:], 13, cache, 1) == 0  # first block differs: nothing matches
    assert pc.load("a", tokens[:4] + [0] + tokens[5:], 13, cache, 1) == 4


def test_eviction_takes_leaves_least_recently_used_first():
    cache, pc = _store(blocks=3)
    a = [1, 1, 1, 1, 2, 2, 2, 2]
    b = [1, 1, 1, 1, 3, 3, 3, 3]
    pc.store("x", a, 8, cache, 0)
    pc.store("x", b, 8, cache, 1)  # shares a's first block
    assert pc.num_blocks == 3
    assert pc.load("x", a, 8, cache, 2) == 8  # a is now more recent than b
    pc.store("x", [5, 5, 5, 5], 4, cache, 0)  # full: b's leaf goes (the shared root has children)
    assert pc.num_blocks == 3 and pc.evicted_total == 1
    assert pc.load("x", b, 8, cache, 2) == 4
    assert pc.load("x", a, 8, cache, 2) == 8
    assert pc.nbytes <= 3 * pc.block_bytes


def test_a_chain_longer_than_the_store_keeps_what_fits():
    cache, pc = _store(blocks=2)
    tokens = list(range(16))
    assert pc.store("x", tokens, 16, cache, 0) == 2  # ancestors of the chain are never evicted for it
    assert pc.load("x", tokens, 15, cache, 1) == 8
    assert torch.equal(cache.k[:, 1, :, :8], cache.k[:, 0, :, :8])


def test_prefix_cache_tensors_follow_the_model_device(lively_model_path, adapter_dirs, prompts):
    """Lookups and stores make no tensor off the model's device (see test_devices.py)."""
    from tests.ml.serve.test_devices import ForeignDefaultEngine

    kwargs = {"max_total_tokens": 512, "prefix_block_size": B, "device": "cpu"}
    with (
        ForeignDefaultEngine(lively_model_path, **kwargs) as eng,
        Engine(lively_model_path, **kwargs) as plain,
    ):
        for e in (eng, plain):
            e.register_adapter("alpha", adapter_dirs["alpha"])
        p = (prompts[1] * 2)[:50]
        outs = [eng.generate(greedy(p + [i], "alpha")) for i in range(3)]
        assert [o.usage.cached_tokens for o in outs] == [0, 48, 48]
        assert [o.token_ids for o in outs] == [
            plain.generate(greedy(p + [i], "alpha")).token_ids for i in range(3)
        ]
        assert eng.device_log.ops_on("meta") == []
        assert {"aten.index_select.default", "aten.index_copy_.default"} <= {
            op for op, _ in eng.device_log.seen
        }
