"""The real SmolLM2-135M (fp32): a batch of base and adapter requests matches transformers generate."""

from __future__ import annotations

import pytest
import torch

from ml.serve import Engine, GenerationRequest

N = 32


@pytest.mark.slow
def test_smollm2_batch_matches_generate(smollm2_path, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from ml.data.render import render_prompt
    from ml.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(smollm2_path)
    questions = ["What is the capital of France?", "Name three primary colours.", "Say hi in Spanish."]
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in questions]

    torch.manual_seed(0)
    base = load_causal_lm(smollm2_path).eval()
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(load_causal_lm(smollm2_path), lora)
    for name, p in peft_model.named_parameters():  # a noticeable but sane adapter
        if "lora_B" in name:
            p.data.mul_(0.05)
    peft_model.save_pretrained(str(tmp_path / "ad"))

    def hf(prompt, model):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False)
        return out[0, len(prompt) :].tolist()

    with Engine(smollm2_path, dtype="float32", max_total_tokens=256, start=False) as eng:
        eng.register_adapter("ad", tmp_path / "ad")
        plan = [(prompts[0], None), (prompts[1], "ad"), (prompts[2], None), (prompts[0], "ad")]
        handles = [eng.submit(GenerationRequest(p, adapter=a, max_tokens=N, temperature=0)) for p, a in plan]
        eng.start()
        got = [h.result(timeout=600) for h in handles]

    adapted = PeftModel.from_pretrained(load_causal_lm(smollm2_path), str(tmp_path / "ad")).eval()
    for (p, a), out in zip(plan, got):
        want = hf(p, adapted if a else base)
        assert out.token_ids == want, (a, tok.decode(out.token_ids), tok.decode(want))
    assert got[1].token_ids != hf(prompts[1], base)  # the adapter matters
    assert "Paris" in got[0].text
