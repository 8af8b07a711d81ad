"""Other Llama-family layouts the decoder supports (attention biases, q/k norms, Mistral) match
transformers generate too."""

from __future__ import annotations

import pytest
import torch

from ml.serve import Engine, GenerationRequest


def _tiny(kind: str, tokenizer_dir, out):
    from transformers import (
        AutoTokenizer,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = {
        "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    }  # fmt: skip
    config_cls, model_cls, extra = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v biases
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),  # q_norm / k_norm
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**common, **extra))
    with torch.no_grad():
        for p in model.parameters():  # biases and norm weights too, so they matter
            p.copy_(torch.randn(p.shape) * 0.2)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return model.eval()


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral"])
def test_architecture_matches_generate(kind, tiny_model_path, tmp_path):
    model = _tiny(kind, tiny_model_path, tmp_path)
    prompts = [[1, 5, 9, 200, 300, 17], [1, 2000, 3000]]
    with Engine(tmp_path, max_total_tokens=256, start=False) as eng:
        handles = [eng.submit(GenerationRequest(p, max_tokens=20, temperature=0)) for p in prompts]
        eng.start()
        for p, h in zip(prompts, handles):
            with torch.no_grad():
                want = model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False)
            assert h.result(timeout=60).token_ids == want[0, len(p) :].tolist()
