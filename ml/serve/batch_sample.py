"""Sampling a fixed batch of prompts with the engine's decoder: RL rollouts without transformers' generate.

Owns one static batch from prompt to last token: a single prefill forward over the (right-padded)
prompts, then one decode step per new token for every row, sampled with temperature, top-k and top-p as
transformers' warpers apply them, until every row has produced an end token or the length limit. It runs
on a DecoderRunner built with live=True over the model being trained, so each call samples the current
weights. It does not score, batch requests over time, or stream (engine.py does that for serving).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ml.serve.decoder import DecoderRunner, UnsupportedModel


def warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Logits [n, vocab] (float32) after temperature, top-k and top-p, in transformers' order; tokens
    outside the kept set are -inf."""
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(ordered, dim=-1)
        # drop a token once the mass before it already reaches top_p (the best token always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


@torch.no_grad()
def sample_batch(
    runner: DecoderRunner,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Responses [n, R] for n prompts: R is the longest response, each row ends with its end token (if it
    produced one) and is padded with pad_id after it, like transformers' generate. greedy picks the most
    likely token (the warpers do not apply)."""
    n = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    if n == 0 or int(lens.min()) == 0:
        raise ValueError("every prompt needs at least one token")
    device = runner.device
    width = int(lens.max())
    cache = runner.new_cache(n, width + max_new_tokens)
    cache.ensure(width + max_new_tokens)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    rows = torch.arange(n, device=device)
    pos = torch.arange(width, device=device).repeat(n, 1)
    last = torch.stack([torch.arange(n), lens - 1], dim=1).to(device)
    logits = runner.forward(ids.to(device), pos, rows, True, cache, width, None, last)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    step_index = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1).to(device)
    cur = lens.to(device)  # the position the next token is written at
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if greedy:
            tok = torch.argmax(logits, dim=-1)
        else:
            probs = torch.softmax(warp(logits, temperature, top_k, top_p), dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attn_len = int(cur.max()) + 1
        logits = runner.forward(tok[:, None], cur[:, None], rows, True, cache, attn_len, None, step_index)
        cur = cur + 1
    return torch.stack(out, dim=1)


class LiveSampler:
    """Samples a model that is being trained (RL rollouts): a DecoderRunner(live=True) over it, built on
    first use and rebuilt only when a longer rotary table is needed. A PEFT model is read through its
    LoRA-wrapped base; available is False when the engine does not run the architecture (callers then
    use transformers' generate)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._runner: DecoderRunner | None = None
        self._positions = 0
        self.available = True

    def runner(self, positions: int) -> DecoderRunner | None:
        if not self.available:
            return None
        if self._runner is None or self._positions < positions:
            dtype = self.model.get_input_embeddings().weight.dtype
            try:
                self._runner = DecoderRunner(self.model, dtype, positions, live=True)
            except UnsupportedModel:
                self.available = False
                return None
            self._positions = positions
        return self._runner

    def sample(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, **kw) -> torch.Tensor | None:
        """sample_batch over the live model, or None where the engine cannot run it."""
        runner = self.runner(max(len(p) for p in prompts) + max_new_tokens)
        if runner is None:
            return None
        return sample_batch(runner, prompts, max_new_tokens=max_new_tokens, **kw)
