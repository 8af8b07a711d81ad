"""The arithmetic of PPO for language models, as small pure tensor functions.

Owns: token log-probs and entropy from logits, masked statistics, KL-shaped per-token rewards, GAE,
the clipped policy (surrogate) loss and the clipped value loss. Knows nothing about models,
generation or optimizers (ml.rl.ppo does that). Every function takes a float `mask` of shape
(batch, T) where 1 marks a real response token and 0 marks padding after the end of the response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits): (B, T, V), (B, T) -> (B, T), in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: (B, T, V) -> (B, T)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions; with Bessel's correction when `unbiased`."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over the masked positions; padding positions come out as 0.

    With shift_mean=False the mean is added back (used for rewards, whose sign carries meaning).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded mask (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * (mask > 0)).amax(dim=1)


def kl_shaped_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * (logp_t - logp_ref_t), plus the sequence score on its last token.

    Returns (rewards, kl) both (B, T) and zero on padding; `kl` is the per-token estimate logp - logp_ref
    (its masked sum over a row is an unbiased estimate of KL(policy || ref) for that sampled sequence).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.clone()
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response, run backwards from its last token.

    delta_t = r_t + gamma * V_{t+1} - V_t (V beyond the last real token is 0: the episode ends there),
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Both (B, T), zero on padding.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        # Padding positions neither carry an advantage nor pass one backwards.
        advantages[:, t] = adv * m
        next_adv = adv * m
        next_value = values[:, t] * m
    returns = advantages + values
    return advantages, returns * mask


@dataclass(frozen=True)
class PolicyLossOut:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor  # mean of (old - new) log-prob, the usual estimate of KL(old || new)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLossOut:
    """PPO's pessimistic surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps)).

    `old_logprobs` are the ones the rollout policy gave when the response was sampled. Where the clipped
    term wins, the gradient through that token is zero.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(old_logprobs - logprobs, mask)
    return PolicyLossOut(loss=loss, clipfrac=clipfrac, approx_kl=approx_kl)


@dataclass(frozen=True)
class ValueLossOut:
    loss: torch.Tensor
    clipfrac: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> ValueLossOut:
    """0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return ValueLossOut(loss=loss, clipfrac=clipfrac)
