"""RL rollouts on CUDA: the merged snapshot (a plain float32 LoRA policy) samples what PEFT's layers compute, and
a 4-bit QLoRA policy, which cannot be merged, is sampled through its live layers. The CPU suite covers the same
code (tests/ml/serve/test_batch_sample.py) with oneDNN packing; here the merged weights run as plain F.linear."""

from __future__ import annotations

import pytest
import torch

from ml.serve.batch_sample import LiveSampler, merged_snapshot, sample_batch
from ml.serve.decoder import DecoderRunner

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 17, 42, 9, 3], [7, 7, 120], [300, 2, 8, 64, 90, 11, 4]]
GREEDY = {"max_new_tokens": 12, "eos_ids": [-1], "pad_id": 0, "greedy": True}


def _policy(path, quantization="none"):
    from peft import LoraConfig, get_peft_model

    from ml.models import load_causal_lm

    torch.manual_seed(0)
    base = load_causal_lm(path, quantization=quantization, device_map={"": 0} if quantization != "none" else None)
    if quantization == "none":
        base = base.to("cuda")
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config).to("cuda").eval()


def test_merged_snapshot_on_cuda_samples_what_the_live_layers_compute(lively_model_path):
    policy = _policy(lively_model_path)
    live = DecoderRunner(policy.get_base_model(), torch.float32, 64, live=True)
    snap = merged_snapshot(live)
    assert snap is not None and snap.layers[0].qkv.packed is None  # no oneDNN packing on CUDA
    assert torch.equal(sample_batch(snap, PROMPTS, **GREEDY), sample_batch(live, PROMPTS, **GREEDY))


def test_qlora_policy_on_cuda_samples_its_live_layers(lively_model_path):
    policy = _policy(lively_model_path, quantization="4bit")
    sampler = LiveSampler(policy)
    out = sampler.sample(PROMPTS, **GREEDY)
    assert out is not None and out.shape == (3, 12)
    assert sampler.merged is False
