"""Fixtures for the serving tests: a tiny model whose greedy output is varied (the stock tiny model
repeats one token), two random LoRA adapters for it, and a cached HF reference generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lively_model_path(tiny_model_path, tmp_path_factory) -> Path:
    """tiny_model_path with weights re-drawn at std 0.2: greedy text changes with the context, so a
    wrong attention mask or cache row shows up as different tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lively-llama")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_path)).save_pretrained(str(out))
    return out


def _make_adapter(base: Path, out: Path, seed: int, **lora_kwargs) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    cfg = LoraConfig(init_lora_weights=False, **lora_kwargs)  # random B: differs from the base
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def adapter_dirs(lively_model_path, tmp_path_factory) -> dict[str, Path]:
    """Two adapters of different shape: all-linear r=4, and q/v/down only r=8 with rsLoRA."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": _make_adapter(
            lively_model_path, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"
        ),
        "beta": _make_adapter(
            lively_model_path,
            root / "beta",
            2,
            r=8,
            lora_alpha=16,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
    }


class Reference:
    """transformers generate (greedy) with the same model and adapter: the parity oracle."""

    def __init__(self, base: Path, adapters: dict[str, Path]) -> None:
        self.base, self.adapters = base, adapters
        self._models: dict[str | None, torch.nn.Module] = {}

    def model(self, adapter: str | None):
        if adapter not in self._models:
            from peft import PeftModel

            from ml.models import load_causal_lm

            m = load_causal_lm(self.base).eval()
            if adapter is not None:
                m = PeftModel.from_pretrained(m, str(self.adapters[adapter])).eval()
            self._models[adapter] = m
        return self._models[adapter]

    def greedy(self, prompt: list[int], n: int, adapter: str | None = None, eos: bool = True) -> list[int]:
        m = self.model(adapter)
        kwargs = {} if eos else {"eos_token_id": None}
        with torch.no_grad():
            out = m.generate(
                torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, **kwargs
            )
        return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="session")
def reference(lively_model_path, adapter_dirs) -> Reference:
    return Reference(lively_model_path, adapter_dirs)


@pytest.fixture
def make_engine(lively_model_path, adapter_dirs):
    """Factory for engines over the lively model with both adapters registered; closed at teardown."""
    from ml.serve import Engine

    made = []

    def make(**kwargs):
        kwargs.setdefault("max_total_tokens", 512)
        eng = Engine(kwargs.pop("path", lively_model_path), **kwargs)
        for name, d in adapter_dirs.items():
            eng.register_adapter(name, d)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


@pytest.fixture(scope="session")
def prompts(tiny_model_path) -> list[list[int]]:
    """Chat prompts of different lengths, rendered as serving renders them."""
    from ml.data.render import render_prompt
    from ml.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    texts = [
        "Hello there",
        "What is the capital of France? Please answer in one sentence, then explain why.",
        "x",
        "Write a haiku about continuous batching and KV caches, with an emoji.",
    ]
    return [render_prompt(tok, [{"role": "user", "content": t}]) for t in texts]
