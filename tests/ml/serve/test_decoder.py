"""The batched attention (decode and prefill layouts, fp32 and bf16) against a plain reference."""

from __future__ import annotations

import pytest
import torch

from ml.serve.decoder import DecoderRunner, UnsupportedModel


def reference_attention(q, keys, values, hide, groups):
    """q [n, T, nh, hd], keys/values [n, kvh, L, hd], hide [n, T, L] -> [n, T, nh*hd] in fp32."""
    n, t, nh, hd = q.shape
    k = keys.float().repeat_interleave(groups, dim=1)  # HF repeat_kv order
    v = values.float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("nthd,nhld->nhtl", q.float(), k) * hd**-0.5
    scores = scores.masked_fill(hide[:, None], float("-inf"))
    out = torch.einsum("nhtl,nhld->nthd", torch.softmax(scores, -1), v)
    return out.reshape(n, t, nh * hd)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("t", [1, 5])
def test_attend_matches_reference(lively_model_path, dtype, tol, t):
    from ml.models import load_causal_lm

    model = load_causal_lm(lively_model_path, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    runner = DecoderRunner(model, dtype, max_positions=64)
    n, length = 3, 20
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n, t, runner.num_heads, runner.head_dim, generator=gen).to(dtype)
    cache = torch.randn(n, runner.kv_heads, 32, runner.head_dim, generator=gen).to(dtype)
    keys, values = cache[:, :, :length], cache.flip(0)[:, :, :length]  # strided views, like the cache
    pos = torch.tensor([19, 7, 12])[:, None] - torch.arange(t - 1, -1, -1)[None, :]  # [n, T]
    hide = torch.arange(length)[None, None, :] > pos[:, :, None]
    got = runner._attend(q, keys, values, hide).float()
    want = reference_attention(q, keys, values, hide, runner.groups_per_kv)
    assert torch.allclose(got, want, atol=tol, rtol=tol)


def test_unsupported_architecture_is_refused(lively_model_path):
    from ml.models import load_causal_lm

    model = load_causal_lm(lively_model_path)
    model.config.model_type = "gemma"
    with pytest.raises(UnsupportedModel):
        DecoderRunner(model, torch.float32, max_positions=64)


def test_prepacked_16bit_weights_give_the_same_logits(lively_model_path, monkeypatch):
    """On CPU a bf16 model's projections run on oneDNN's prepacked weights: the logits of a prefill
    and a decode step are bit-identical to the plain F.linear path."""
    from ml.models import load_causal_lm
    from ml.serve import decoder

    packed = DecoderRunner(
        load_causal_lm(lively_model_path, dtype="bfloat16"), torch.bfloat16, max_positions=64
    )
    if packed.layers[0].qkv.packed is None:
        pytest.skip("oneDNN prepacking is not available in this torch build")
    assert packed.head_packed is not None
    monkeypatch.setattr(decoder, "prepack", lambda w: None)
    plain = DecoderRunner(
        load_causal_lm(lively_model_path, dtype="bfloat16"), torch.bfloat16, max_positions=64
    )
    assert plain.layers[0].qkv.packed is None

    def run(runner):
        cache = runner.new_cache(2, 64)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, runner.vocab_size, (2, 6), generator=gen)
        pos = torch.arange(6).repeat(2, 1)
        last = torch.tensor([[0, 5], [1, 5]])
        prefill = runner.forward(ids, pos, torch.arange(2), False, cache, 6, None, last)
        step = torch.tensor([[0, 0], [1, 0]])
        decode = runner.forward(
            prefill.argmax(-1)[:, None], torch.full((2, 1), 6), torch.arange(2), True, cache, 7, None, step
        )
        return prefill, decode

    for a, b in zip(run(packed), run(plain)):
        assert torch.equal(a, b)
