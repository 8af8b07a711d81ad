"""One PPO rollout phase: sample responses to a batch of prompts and record everything the update needs.

Owns prompt batching (left padding, left truncation), cutting responses at their first end-of-turn
token, scoring them with the reward function, and the rollout-time log-probs, values and reference
log-probs. The old log-probs of the PPO ratio are the ones recorded here, with the policy exactly as it
sampled; the update never recomputes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ml.data.render import render_prompt
from ml.records import Message
from ml.rl.config import PPOConfig
from ml.rl.ppo_policy import ActorCritic
from ml.rl.reward_source import RewardFn


@dataclass
class Rollouts:
    input_ids: torch.Tensor  # (N, P + R): left-padded prompt, then response right-padded with pad ids
    attention_mask: torch.Tensor  # (N, P + R)
    prompt_len: int  # P
    response_mask: torch.Tensor  # (N, R) float: 1 on response tokens up to and including the end token
    logprobs: torch.Tensor  # (N, R) policy log-probs at sampling time (the PPO "old" log-probs)
    ref_logprobs: torch.Tensor  # (N, R)
    values: torch.Tensor  # (N, R)
    scores: torch.Tensor  # (N,) reward for each whole response (after missing_eos_penalty)
    raw_scores: torch.Tensor  # (N,) what the reward function returned
    ended: torch.Tensor  # (N,) bool: the response finished with an end token
    texts: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pad_prompts(prompt_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


def response_mask(responses: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): 1 up to and including the first end token of each row; whether one was found."""
    is_end = torch.zeros_like(responses, dtype=torch.bool)
    for e in eos_ids:
        is_end |= responses == e
    ended = is_end.any(dim=1)
    # Count of end tokens strictly before each position; a token is kept while that count is 0.
    before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
    return (before == 0).float(), ended


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every token that ends a turn: the tokenizer's eos and the model's generation_config eos id(s)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if e is not None:
            ids.add(e)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def collect_rollouts(
    model: ActorCritic,
    tokenizer,
    prompts: Sequence[tuple[Message, ...]],
    reward_fn: RewardFn,
    cfg: PPOConfig,
) -> Rollouts:
    pad = tokenizer.pad_token_id
    eos = eos_token_ids(tokenizer, model.policy)
    prompt_ids = [render_prompt(tokenizer, p)[-cfg.max_prompt_length :] for p in prompts]
    ids, mask = pad_prompts(prompt_ids, pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    P = ids.shape[1]
    sequences = model.generate(ids, mask, cfg.sampling, pad, eos)
    responses = sequences[:, P:]
    if responses.shape[1] == 0:
        raise RuntimeError("generation produced no tokens")
    resp_mask, ended = response_mask(responses, eos)
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, pad))
    input_ids = torch.cat([ids, responses], dim=1)
    attention_mask = torch.cat([mask, resp_mask.long()], dim=1)

    texts = []
    for row, m in zip(responses, resp_mask):
        kept = [t for t in row[m.bool()].tolist() if t not in eos]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    conversations = [tuple(p) + (Message("assistant", t),) for p, t in zip(prompts, texts)]
    raw = torch.tensor([float(x) for x in reward_fn(conversations)], dtype=torch.float32, device=model.device)
    if raw.shape[0] != len(prompts):
        raise ValueError(f"reward function returned {raw.shape[0]} scores for {len(prompts)} responses")
    scores = raw.clone()
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~ended).float()

    logprobs, ref_logprobs, values = [], [], []
    for s in range(0, len(prompts), cfg.resolved_minibatch_size):
        sl = slice(s, s + cfg.resolved_minibatch_size)
        fwd = model.forward_response(input_ids[sl], attention_mask[sl], P)
        logprobs.append(fwd.logprobs)
        values.append(fwd.values)
        ref_logprobs.append(model.reference_logprobs(input_ids[sl], attention_mask[sl], P))
    return Rollouts(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_len=P,
        response_mask=resp_mask,
        logprobs=torch.cat(logprobs) * resp_mask,
        ref_logprobs=torch.cat(ref_logprobs) * resp_mask,
        values=torch.cat(values) * resp_mask,
        scores=scores,
        raw_scores=raw,
        ended=ended,
        texts=texts,
    )
