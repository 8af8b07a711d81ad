"""Sampled tokens follow the distribution the request asks for (temperature, top_p), reproducibly by seed."""

from __future__ import annotations

import math

import torch

from ml.serve.request import GenerationRequest
from ml.serve.sampling import SamplingState


def _state(vocab: int, **kw) -> SamplingState:
    return SamplingState.from_request(GenerationRequest([1], **kw), vocab, torch.device("cpu"))


def _counts(state: SamplingState, logits: torch.Tensor, draws: int) -> torch.Tensor:
    counts = torch.zeros(logits.shape[0])
    for _ in range(draws):
        counts[state.pick(logits)] += 1
    return counts


def test_samples_follow_softmax_of_logits_over_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, -3.0])
    for temperature in (1.0, 0.5):
        want = torch.softmax(logits / temperature, dim=-1)
        draws = 20_000
        got = _counts(_state(6, temperature=temperature, seed=7), logits, draws) / draws
        # each frequency within 4.5 standard errors of its probability
        for p, f in zip(want.tolist(), got.tolist()):
            assert abs(f - p) <= 4.5 * math.sqrt(p * (1 - p) / draws) + 1e-4, (temperature, p, f)


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    got = _counts(_state(4, temperature=1.0, top_p=0.7, seed=1), logits, 5_000)
    assert got[2] == 0 and got[3] == 0  # 0.5 + 0.3 reaches 0.7: the rest never comes up
    assert abs(got[0] / 5_000 - 0.5 / 0.8) < 0.03


def test_same_seed_same_draws():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = [_state(1000, temperature=1.0, seed=3).pick(logits) for _ in range(1)]
    s1, s2 = _state(1000, temperature=1.0, seed=3), _state(1000, temperature=1.0, seed=3)
    assert [s1.pick(logits) for _ in range(50)] == [s2.pick(logits) for _ in range(50)]
    assert a[0] == _state(1000, temperature=1.0, seed=3).pick(logits)
