"""ml.train.batches: packed rows compute exactly what one-example-at-a-time computes; nothing is split."""

from __future__ import annotations

import torch

from ml.data.render import IGNORE_INDEX
from ml.models import load_causal_lm, load_tokenizer
from ml.records import write_canonical
from ml.train.batches import PackedCollator, PaddedCollator, _pack_rows, tokenize_file
from tests.ml.train.conftest import word_conversations


def test_pack_rows_first_fit_never_exceeds_capacity():
    lengths = [50, 30, 20, 70, 10, 40]
    rows = _pack_rows(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 3  # 220 tokens need at least 3 rows of 100


def _forward(model, batch):
    # use_cache=False as in training: with a cache transformers skips the packed-sequence mask.
    return model(
        **{k: v for k, v in batch.items() if k not in ("n_tokens", "labels")}, use_cache=False
    ).logits


def _loss_sum(logits, labels):
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def test_packed_rows_match_separate_examples(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    model = load_causal_lm(tiny_model_path).eval()
    path = tmp_path / "t.jsonl"
    write_canonical(path, word_conversations(6))
    rows = list(tokenize_file(tok, path, 512))
    lengths = [len(r["input_ids"]) for r in rows]
    packed = PackedCollator(tok.pad_token_id, max_length=150)(rows)
    groups = _pack_rows(lengths, 150)
    assert packed["input_ids"].shape[0] == len(groups) < len(rows)  # several examples per row
    assert packed["n_tokens"] == sum(lengths)
    with torch.no_grad():
        logits = _forward(model, packed)
        separate = [_forward(model, PaddedCollator(tok.pad_token_id)([r]))[0] for r in rows]
        padded = PaddedCollator(tok.pad_token_id)(rows)
        padded_loss = _loss_sum(_forward(model, padded), padded["labels"])
    # Every example's logits inside a packed row equal its logits alone: no attention across examples.
    for r, group in enumerate(groups):
        at = 0
        for i in group:
            torch.testing.assert_close(logits[r, at : at + lengths[i]], separate[i], rtol=1e-4, atol=1e-4)
            at += lengths[i]
    separate_loss = sum(_loss_sum(s[None], torch.tensor([r["labels"]])) for s, r in zip(separate, rows))
    torch.testing.assert_close(_loss_sum(logits, packed["labels"]), separate_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded_loss, separate_loss, rtol=1e-5, atol=1e-4)
