"""RL rollouts on the engine's decoder: a static batch sampled from a live PEFT policy equals transformers'
generate (greedy, fp32, token for token), follows LoRA weights as they change, and warps like transformers."""

from __future__ import annotations

import torch

from ml.serve.batch_sample import sample_batch, warp
from ml.serve.decoder import DecoderRunner


def _policy(path):
    from peft import LoraConfig, get_peft_model

    from ml.models import load_causal_lm

    torch.manual_seed(0)
    policy = get_peft_model(
        load_causal_lm(path), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    return policy.eval()


def _hf(policy, prompts, n, pad, eos):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                          pad_token_id=pad, eos_token_id=eos)
    return out[:, width:]


def test_greedy_rollouts_equal_generate_and_follow_the_live_adapter(lively_model_path):
    policy = _policy(lively_model_path)
    base = policy.get_base_model()
    runner = DecoderRunner(base, torch.float32, 64, live=True)
    prompts = [[5, 17, 42, 9, 3], [7, 7, 120], [300, 2, 8, 64, 90, 11, 4]]
    rounds = []
    for round_ in range(2):
        # an end token the first row produces at its 5th step: rows end at different steps
        free = sample_batch(runner, prompts, max_new_tokens=12, eos_ids=[-1], pad_id=0, greedy=True)
        eos = [int(free[0, 4])]
        got = sample_batch(runner, prompts, max_new_tokens=12, eos_ids=eos, pad_id=0, greedy=True)
        want = _hf(policy, prompts, 12, 0, eos)
        assert got.shape == want.shape and torch.equal(got, want), round_
        assert got[0, 4] == eos[0] and (got[0, 5:] == 0).all()  # ended, then padded
        rounds.append(got)
        with torch.no_grad():  # a training step moves the adapter: the same runner samples the new weights
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.5)
    assert not torch.equal(rounds[0], rounds[1])  # the adapter's change shows in what is sampled


def test_warp_matches_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(1)) * 3
    for t, k, p in ((1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.9), (0.9, 50, 0.8)):
        want = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            want = TopKLogitsWarper(k)(None, want)
        if p < 1.0:
            want = TopPLogitsWarper(p)(None, want)
        got = warp(logits, t, k, p)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (t, k, p)
        kept = ~torch.isinf(want)
        assert torch.allclose(got[kept], want[kept])


def test_sampled_rollouts_are_reproducible_and_stop_at_the_end_token(lively_model_path):
    policy = _policy(lively_model_path)
    runner = DecoderRunner(policy.get_base_model(), torch.float32, 64, live=True)
    prompts = [[5, 17, 42], [9, 3]]

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample_batch(runner, prompts, max_new_tokens=16, eos_ids=[2], pad_id=0, temperature=1.0, top_k=40,
                            generator=g)

    a, b = run(3), run(3)
    assert torch.equal(a, b)
    for row in a.tolist():
        if 2 in row:
            assert all(t == 0 for t in row[row.index(2) + 1 :])


def _prefill_logits(runner, prompts):
    n, width = len(prompts), max(map(len, prompts))
    ids = torch.zeros(n, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    cache = runner.new_cache(n, width)
    cache.ensure(width)
    last = torch.tensor([[i, len(p) - 1] for i, p in enumerate(prompts)])
    return runner.forward(ids, torch.arange(width).repeat(n, 1), torch.arange(n), True, cache, width, None, last)


def test_merged_snapshot_samples_the_policy_the_live_layers_compute(lively_model_path):
    """The snapshot PPO/GRPO/RLOO sample (each LoRA update merged into its fused projection) computes what
    PEFT's layers compute (to float32 rounding), greedy rollouts token for token, and each call merges the
    adapter as it is then."""
    from ml.serve.batch_sample import merged_snapshot

    policy = _policy(lively_model_path)
    live = DecoderRunner(policy.get_base_model(), torch.float32, 64, live=True)
    prompts = [[5, 17, 42, 9, 3], [7, 7, 120], [300, 2, 8, 64, 90, 11, 4]]
    before = None
    for round_ in range(2):
        snap = merged_snapshot(live)
        assert snap is not None
        want, got = _prefill_logits(live, prompts), _prefill_logits(snap, prompts)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (round_, (got - want).abs().max())
        greedy = {"max_new_tokens": 12, "eos_ids": [-1], "pad_id": 0, "greedy": True}
        assert torch.equal(sample_batch(snap, prompts, **greedy), sample_batch(live, prompts, **greedy))
        if before is not None:  # the adapter moved between the calls: the new snapshot has the new weights
            assert not torch.allclose(got, before, atol=1e-3)
        before = got
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.5)
    with policy.disable_adapter():  # the base model alone: merged with nothing
        snap = merged_snapshot(live)
        assert torch.allclose(_prefill_logits(snap, prompts), _prefill_logits(live, prompts), rtol=1e-4, atol=1e-4)


def test_merged_snapshot_declines_what_it_cannot_merge_exactly(lively_model_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from ml.models import load_causal_lm
    from ml.serve import batch_sample
    from ml.serve.batch_sample import LiveSampler, merged_snapshot

    # 16-bit weights would round a young adapter's update away: the live layers are sampled
    bf16 = get_peft_model(load_causal_lm(lively_model_path, dtype="bfloat16"), LoraConfig(r=4, target_modules="all-linear"))
    assert merged_snapshot(DecoderRunner(bf16.get_base_model(), torch.bfloat16, 32, live=True)) is None
    # DoRA's magnitude vector is not a low-rank sum
    dora = get_peft_model(load_causal_lm(lively_model_path), LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    assert merged_snapshot(DecoderRunner(dora.get_base_model(), torch.float32, 32, live=True)) is None
    # a LoRA bias on B is an update merging B @ A leaves out
    biased = get_peft_model(load_causal_lm(lively_model_path), LoraConfig(r=4, target_modules="all-linear", lora_bias=True))
    assert merged_snapshot(DecoderRunner(biased.get_base_model(), torch.float32, 32, live=True)) is None

    policy = _policy(lively_model_path)
    sampler = LiveSampler(policy)
    kw = {"max_new_tokens": 6, "eos_ids": [-1], "pad_id": 0, "greedy": True}
    merged = sampler.sample([[5, 17, 42], [9, 3]], **kw)
    assert sampler.merged is True
    # short of memory for the copy: the same call samples the live layers, with the same result
    monkeypatch.setattr(batch_sample, "available_bytes", lambda device: 1 << 20)
    assert torch.equal(sampler.sample([[5, 17, 42], [9, 3]], **kw), merged)
    assert sampler.merged is False


def test_prepack_keeps_float32_exact_unless_asked():
    import torch.nn.functional as F

    from ml.serve.decoder import prepack

    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 64)
    assert prepack(w) is None  # serving's float32 is the bit-exact reference
    packed = prepack(w, exact=False)
    if packed is None:  # a PyTorch built without oneDNN
        return
    from ml.serve.decoder import packed_linear

    assert torch.allclose(packed_linear(x, packed, None), F.linear(x, w), rtol=1e-4, atol=1e-5)
