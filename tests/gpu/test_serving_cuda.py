"""The serving engine on a CUDA device (skipped without one; tests/ml/serve/test_devices.py checks the
same device discipline on CPU): a plain and a bitsandbytes 4-bit base, with and without a LoRA adapter,
give transformers generate's greedy tokens, and sampling (generators, penalty counts) runs on the GPU."""

from __future__ import annotations

import pytest
import torch

from ml.models import load_causal_lm
from ml.serve import Engine, GenerationRequest

pytestmark = pytest.mark.gpu

N = 16
PROMPTS = [[1, 5, 9, 200, 300, 17, 42, 7], [1, 2000, 3000], list(range(3, 60))]


@pytest.fixture(scope="module")
def lively(tiny_model_path, tmp_path_factory):
    """The tiny model with weights re-drawn at std 0.2 (greedy text depends on the context) and a
    random LoRA adapter for it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("cuda-serve")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(str(root / "base"), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_path)).save_pretrained(str(root / "base"))
    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(root / "base")),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    peft_model.save_pretrained(str(root / "adapter"))
    return root / "base", root / "adapter"


def _reference(base, adapter, quantization: str):
    from peft import PeftModel

    model = load_causal_lm(base, quantization=quantization, device_map={"": "cuda"}).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model


@pytest.mark.parametrize("quantization", ["none", "4bit"])
@pytest.mark.parametrize("with_adapter", [False, True])
def test_cuda_greedy_matches_generate(lively, quantization, with_adapter):
    base, adapter = lively
    ref = _reference(base, adapter if with_adapter else None, quantization)
    with Engine(base, quantization=quantization, max_total_tokens=256, start=False) as eng:
        assert eng.device.type == "cuda" and eng.cache.k.device.type == "cuda"
        eng.register_adapter("a", adapter)
        name = "a" if with_adapter else None
        handles = [
            eng.submit(GenerationRequest(p, adapter=name, max_tokens=N, temperature=0)) for p in PROMPTS
        ]
        eng.start()  # one mixed prefill, then shared decode steps
        for p, h in zip(PROMPTS, handles):
            with torch.no_grad():
                want = ref.generate(
                    torch.tensor([p], device="cuda"), max_new_tokens=N, do_sample=False, pad_token_id=0
                )
            out = h.result(timeout=120)
            assert out.error is None
            assert out.token_ids == want[0, len(p) :].tolist()
    assert torch.cuda.max_memory_allocated() > 0


def test_cuda_sampling_with_penalties_and_logprobs(lively):
    base, adapter = lively
    with Engine(base, quantization="4bit", max_total_tokens=256) as eng:
        eng.register_adapter("a", adapter)
        kw = {"max_tokens": N, "temperature": 0.8, "top_p": 0.9, "seed": 5, "presence_penalty": 0.5,
              "frequency_penalty": 0.5, "logprobs": True, "top_logprobs": 2, "stop_token_ids": []}  # fmt: skip
        a = eng.generate(GenerationRequest(PROMPTS[0], adapter="a", **kw))
        b = eng.generate(GenerationRequest(PROMPTS[0], adapter="a", **kw))
        assert a.finish_reason == "length" and a.error is None
        assert a.token_ids == b.token_ids  # seeded CUDA generators reproduce
        assert len(a.logprobs) == N and all(len(t.top) == 2 for t in a.logprobs)
