"""ml.train.loss: projecting only learned positions gives the model's own loss and gradients."""

from __future__ import annotations

import torch

from ml.config import LoraSettings
from ml.models import load_causal_lm, load_tokenizer
from ml.records import write_canonical
from ml.train.batches import PackedCollator, tokenize_file
from ml.train.loss import learned_only_loss, supports_learned_only_loss
from ml.train.trainable import load_trainable_model
from tests.ml.train.conftest import word_conversations


def test_learned_only_loss_matches_model_loss_and_grads(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    path = tmp_path / "t.jsonl"
    write_canonical(path, word_conversations(6))
    batch = PackedCollator(tok.pad_token_id, 150)(list(tokenize_file(tok, path, 512)))
    batch.pop("n_tokens")
    model = load_trainable_model(tiny_model_path, "lora", LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    for p in model.parameters():  # LoRA B starts at zero; make the adapter matter
        if p.requires_grad:
            p.data.normal_(0, 0.1)
    assert supports_learned_only_loss(model)

    ref = model(**batch).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    fast = learned_only_loss(model, batch)
    fast.backward()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6)
    n_learned = int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(learned_only_loss(model, batch, num_items_in_batch=2 * n_learned), ref / 2)


def test_unsupported_families_fall_back(tiny_model_path):
    model = load_causal_lm(tiny_model_path)
    assert supports_learned_only_loss(model)
    model.config.model_type = "gemma2"  # soft-capped logits: must use the model's own loss
    assert not supports_learned_only_loss(model)
