"""A 4-bit QLoRA model evaluated mid-training (a validation pass: eval mode, no gradients) must train
exactly as before afterwards. On CPUs with AVX512-bf16, bitsandbytes repacks 4-bit weights for inference
on such a pass and never unpacks them, which silently breaks the LoRA gradients that follow."""

import torch

from ml.config import LoraSettings, QuantSettings
from ml.train.trainable import load_trainable_model


def _lora_grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None)
            for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_training_after_a_validation_pass_has_the_same_gradients(tiny_model_path):
    torch.manual_seed(0)
    model = load_trainable_model(tiny_model_path, "qlora", LoraSettings(r=4, alpha=8, dropout=0.0),
                                 QuantSettings(bits=4))
    ids = torch.randint(0, 1000, (2, 16))
    model.train()
    before = _lora_grads(model, ids)
    assert before and all(g is not None for g in before.values())

    model.eval()  # what Trainer.evaluate does
    with torch.no_grad():
        model(input_ids=ids)
    model.train()

    after = _lora_grads(model, ids)
    assert after.keys() == before.keys()
    for name, g in before.items():
        assert after[name] is not None, f"{name}: gradient lost after the validation pass"
        torch.testing.assert_close(after[name], g, rtol=1e-4, atol=1e-6, msg=name)
