"""Stacked mixed-adapter LoRA equals applying each row's own adapter, in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch

from ml.serve.decoder import DecoderRunner
from ml.serve.lora import read_lora_adapter
from ml.serve.lora_batch import LoraBatch


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("group", ["qkv", "o", "gate_up", "down"])
def test_stacked_lora_matches_per_row(lively_model_path, adapter_dirs, dtype, tol, group):
    from ml.models import load_causal_lm

    runner = DecoderRunner(load_causal_lm(lively_model_path), torch.float32, max_positions=16)
    ads = [
        read_lora_adapter(n, adapter_dirs[n], runner.proj_shapes, runner.num_layers)
        for n in ("alpha", "beta")
    ]
    layout = runner.lora_layouts[group]
    fan_in = runner.proj_shapes[layout[0][0]][0]
    width = layout[-1][2]
    row_adapter = torch.tensor([0, -1, 1, 1, 0])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, fan_in, generator=gen)
    y = torch.randn(5, 3, width, generator=gen)

    want = y.clone()
    for i, a in enumerate(row_adapter.tolist()):
        if a < 0:
            continue
        for proj, o0, o1 in layout:
            w = ads[a].weights.get((1, proj))
            if w is not None:
                want[i, :, o0:o1] += x[i] @ w[0] @ w[1]

    batch = LoraBatch(runner.stack_adapters(ads, dtype), row_adapter, n_active=2)
    got = batch.add(y.clone().to(dtype), x.to(dtype), 1, group).float()
    assert torch.allclose(got, want, atol=tol * want.abs().max(), rtol=tol)
    assert not torch.allclose(want, y)  # the adapters really touch this group

    solo = LoraBatch(runner.stack_adapters(ads[:1], dtype), torch.zeros(5, dtype=torch.long), n_active=1)
    got = solo.add(y.clone().to(dtype), x.to(dtype), 1, group).float()
    ref = y.clone()
    for proj, o0, o1 in layout:
        w = ads[0].weights.get((1, proj))
        if w is not None:
            ref[..., o0:o1] += x @ w[0] @ w[1]
    assert torch.allclose(got, ref, atol=tol * ref.abs().max(), rtol=tol)
