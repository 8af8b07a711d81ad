"""Hyperparameters of the RLHF recipes (reward model, DPO, PPO, RLOO, GRPO) as frozen dataclasses.

Owns one config class per method, a docstring and a rule per field (ml.config's rules, checked on
construction, raising ml.config.ConfigError with a dotted param name) and their dict form. LoRA shape
is ml.config's LoraSettings, shared with SFT. Paths to data and models are not hyperparameters: the run_* functions
take them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ml.config import (
    AUTO,
    Auto,
    ConfigError,
    LoraSettings,
    TrainerSettings,
    choice,
    flag,
    integer,
    nested,
    number,
    optional,
)
from ml.config import _DictMixin as _DictForm

__all__ = [
    "ConfigError",
    "DPOConfig",
    "GRPOConfig",
    "LoraSettings",
    "PPOConfig",
    "RLOOConfig",
    "RewardModelConfig",
    "SamplingSettings",
]

Adapter = Literal["lora", "full"]
# Memory defaults for "auto": the most examples per forward pass (trainer recipes) and rollouts per PPO
# minibatch. "auto" picks the largest divisor of the step's examples up to these, so every batch size works.
MICRO_BATCH_DEFAULT = 8
PPO_MINIBATCH_DEFAULT = 4


def largest_divisor(n: int, cap: int) -> int:
    """The largest d <= cap that divides n (1 at worst): splits a step into equal forward passes."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


@dataclass(frozen=True)
class SamplingSettings(_DictForm):
    """How the policy samples responses during online RL (PPO, RLOO, GRPO)."""

    max_new_tokens: int = field(default=64, metadata=integer(1, 1 << 16))
    """Longest response in tokens; longer ones are cut there."""
    temperature: float = field(default=1.0, metadata=number(0.0, 10.0, lo_open=True))
    """Softmax temperature; the training log-probs are taken at the same temperature."""
    top_k: int = field(default=0, metadata=integer(0))
    """Sample only among the k most likely tokens (0: off)."""
    top_p: float = field(default=1.0, metadata=number(0.0, 1.0, lo_open=True))
    """Nucleus sampling: smallest set of tokens with this much probability mass (1.0: off)."""


@dataclass(frozen=True)
class _TrainerConfig(TrainerSettings):
    """Fields shared by the RLHF recipes that run on a trl trainer (reward model, DPO, RLOO, GRPO), on top of
    ml.config.TrainerSettings."""

    adapter: Adapter = field(default="lora", metadata=choice("lora", "full"))
    """"lora": train a small adapter (the frozen reference is the same weights with it disabled);
    "full": train every weight (DPO/RLOO/GRPO then keep a second, frozen copy as the reference)."""
    n_epochs: int = field(default=1, metadata=integer(1, 1000))
    """Passes over the training file (ignored when max_steps is set)."""
    batch_size: int = field(default=8, metadata=integer(1, 4096))
    """Examples per optimizer step (preference pairs; prompts for RLOO/GRPO)."""
    micro_batch_size: int | Auto = field(default=AUTO, metadata=integer(1, 4096, auto=True))
    """Examples per forward pass (memory knob); must divide the examples of a step, the rest is accumulated.
    "auto": the largest divisor of them up to 8."""
    learning_rate: float = field(default=1e-4, metadata=number(0.0, 1.0, lo_open=True))
    """Peak AdamW learning rate."""
    warmup_ratio: float = field(default=0.0, metadata=number(0.0, 0.5))
    """Fraction of all steps spent warming the learning rate up from 0."""
    bf16: bool = field(default=False, metadata=flag())
    """bfloat16 autocast. Off by default because trl's configs turn it on, which on CPU really runs bf16."""
    eval_interval: int | None = field(default=None, metadata=optional(integer(1)))
    """Optimizer steps between validation evaluations (None: at the end of each epoch)."""
    checkpoint_interval: int = field(default=50, metadata=integer(1))
    """Optimizer steps between checkpoints (a checkpoint is also written on pause)."""
    keep_checkpoints: int = field(default=2, metadata=integer(1, 1000))
    """Newest checkpoints kept on disk."""

    @property
    def examples_per_step(self) -> int:
        """Sequences (pairs for preferences) one optimizer step trains on."""
        return self.batch_size

    @property
    def resolved_micro_batch_size(self) -> int:
        """micro_batch_size with "auto" replaced by the largest divisor of examples_per_step up to 8."""
        if self.micro_batch_size == AUTO:
            return largest_divisor(self.examples_per_step, MICRO_BATCH_DEFAULT)
        return self.micro_batch_size

    @property
    def gradient_accumulation(self) -> int:
        return self.examples_per_step // self.resolved_micro_batch_size

    def _check(self) -> None:
        n = self.examples_per_step
        if self.micro_batch_size != AUTO and n % self.micro_batch_size:
            what = f"batch_size {self.batch_size}" if n == self.batch_size else f"the {n} completions per step"
            raise ConfigError("micro_batch_size", f"must divide {what}, got {self.micro_batch_size}")


DPOLoss = Literal["sigmoid", "ipo", "hinge", "robust"]


@dataclass(frozen=True)
class DPOConfig(_TrainerConfig, method="dpo", data="preference", recipe="ml.rl.dpo:run_dpo"):
    """Direct preference optimisation against the frozen starting model."""

    learning_rate: float = field(default=5e-6, metadata=number(0.0, 1.0, lo_open=True))
    """Peak AdamW learning rate (DPO wants small ones; LoRA tolerates ~10x more)."""
    beta: float = field(default=0.1, metadata=number(0.0, 100.0, lo_open=True))
    """Strength of the implicit KL to the reference: higher keeps the model closer to it."""
    loss_type: DPOLoss = field(default="sigmoid", metadata=choice("sigmoid", "ipo", "hinge", "robust"))
    """"sigmoid" (the DPO paper), "ipo", "hinge" (SLiC) or "robust" (with label_smoothing)."""
    label_smoothing: float = field(default=0.0, metadata=number(0.0, 0.5, hi_open=True))
    """Assumed probability that a preference label is flipped (robust / conservative DPO)."""
    max_length: int = field(default=1024, metadata=integer(16, 1 << 20))
    """Longest prompt + reply in tokens; the prompt is cut from the left to fit."""


@dataclass(frozen=True)
class RewardModelConfig(_TrainerConfig, method="reward_model", data="preference",
                        recipe="ml.rl.reward:run_reward_model", produces="reward_model"):
    """Reward model: a 1-label sequence classifier trained with the pairwise loss -log sigmoid(r_c - r_r).

    With adapter "lora" the score head is trained in full next to the adapter (peft modules_to_save).
    """

    learning_rate: float = field(default=1e-4, metadata=number(0.0, 1.0, lo_open=True))
    """Peak AdamW learning rate."""
    max_length: int = field(default=1024, metadata=integer(16, 1 << 20))
    """Longest prompt + reply in tokens; the prompt is cut from the left to fit."""
    center_rewards_coefficient: float | None = field(default=None, metadata=optional(number(0.0, 10.0)))
    """Weight of a penalty pulling rewards towards mean zero (0.01 is usual; None: off)."""


@dataclass(frozen=True)
class PPOConfig(_DictForm, method="ppo", data="prompts", recipe="ml.rl.ppo:run_ppo",
                inputs={"reward_model": "reward_model"}, aliases={"batch_size": "rollouts_per_step"}):
    """PPO: LoRA policy + value head, per-token KL penalty to the frozen starting model, reward at the end."""

    steps: int = field(default=100, metadata=integer(1))
    """PPO steps; each samples rollouts_per_step responses, then updates on them."""
    rollouts_per_step: int = field(default=16, metadata=integer(1, 4096))
    """Prompts sampled (one response each) per PPO step. OpenAI's `batch_size` sets this."""
    minibatch_size: int | Auto = field(default=AUTO, metadata=integer(1, 4096, auto=True))
    """Rollouts per optimizer step inside the update; must divide rollouts_per_step. "auto": the largest
    divisor of rollouts_per_step up to 4."""
    ppo_epochs: int = field(default=2, metadata=integer(1, 100))
    """Passes over one step's rollouts."""
    learning_rate: float = field(default=1e-5, metadata=number(0.0, 1.0, lo_open=True))
    """AdamW learning rate for the adapter and the value head (constant)."""
    kl_coef: float = field(default=0.05, metadata=number(0.0, 100.0))
    """Weight of the per-token KL penalty r_t = -kl_coef * (logp - logp_ref)."""
    gamma: float = field(default=1.0, metadata=number(0.0, 1.0))
    """GAE discount."""
    lam: float = field(default=0.95, metadata=number(0.0, 1.0))
    """GAE lambda."""
    clip_range: float = field(default=0.2, metadata=number(0.0, 10.0, lo_open=True))
    """Policy ratio clip: tokens whose ratio left [1 - c, 1 + c] in the favourable direction stop
    getting gradient."""
    clip_range_value: float = field(default=0.2, metadata=number(0.0, 1e6, lo_open=True))
    """Value clip: a new value may move this far from the rollout's value before it stops getting gradient."""
    vf_coef: float = field(default=0.1, metadata=number(0.0, 100.0))
    """Weight of the value loss in the total loss."""
    whiten_advantages: bool = field(default=True, metadata=flag())
    """Normalise advantages to mean 0 / std 1 over each step's response tokens."""
    missing_eos_penalty: float | None = field(default=None, metadata=optional(number(0.0, 1e6)))
    """Subtracted from the score of a response cut at max_new_tokens without ending (None: off)."""
    max_prompt_length: int = field(default=512, metadata=integer(1, 1 << 20))
    """Prompts are cut from the left to this many tokens."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings, metadata=nested(SamplingSettings))
    """How rollouts are sampled."""
    lora: LoraSettings = field(default_factory=LoraSettings, metadata=nested(LoraSettings))
    """Policy adapter (the reference is the same weights with it disabled)."""
    max_grad_norm: float = field(default=1.0, metadata=number(0.0, 1e6, lo_open=True))
    """Gradient clipping by global norm."""
    bf16: bool = field(default=False, metadata=flag())
    """bfloat16 autocast for forward passes (weights and optimizer stay fp32)."""
    checkpoint_interval: int = field(default=10, metadata=integer(1))
    """PPO steps between checkpoints (a checkpoint is also written on pause and at the end)."""
    keep_checkpoints: int = field(default=2, metadata=integer(1, 1000))
    """Newest checkpoints kept on disk."""
    seed: int = field(default=42, metadata=integer(0, 2**32 - 1))
    """Seed for prompt order, adapter and value-head initialisation, and sampling."""

    @property
    def batch_size(self) -> int:
        """OpenAI's name for the rollouts of one step (shown in the job's hyperparameters)."""
        return self.rollouts_per_step

    @property
    def resolved_minibatch_size(self) -> int:
        if self.minibatch_size == AUTO:
            return largest_divisor(self.rollouts_per_step, PPO_MINIBATCH_DEFAULT)
        return self.minibatch_size

    def _check(self) -> None:
        if self.minibatch_size != AUTO and self.rollouts_per_step % self.minibatch_size:
            raise ConfigError(
                "minibatch_size",
                f"must divide rollouts_per_step {self.rollouts_per_step}, got {self.minibatch_size}",
            )


@dataclass(frozen=True)
class _GroupConfig(_TrainerConfig):
    """Fields shared by RLOO and GRPO (trl's online trainers: several samples per prompt, no critic)."""

    learning_rate: float = field(default=1e-5, metadata=number(0.0, 1.0, lo_open=True))
    """Peak AdamW learning rate."""
    batch_size: int = field(default=2, metadata=integer(1, 4096))
    """Prompts per optimizer step (as in OpenAI's reinforcement fine-tuning); each gets num_generations
    completions, so a step trains on batch_size * num_generations completions."""
    micro_batch_size: int | Auto = field(default=AUTO, metadata=integer(1, 4096, auto=True))
    """Completions per forward pass; must divide batch_size * num_generations. "auto": the largest divisor
    of that up to 8."""
    num_generations: int = field(default=4, metadata=integer(2, 256))
    """Responses sampled per prompt; each is judged against the others for the same prompt."""
    beta: float = field(default=0.05, metadata=number(0.0, 100.0))
    """Weight of the KL to the reference (0 skips the reference forward pass)."""
    num_iterations: int = field(default=1, metadata=integer(1, 100))
    """Updates per batch of generations (> 1 re-uses them with ratio clipping)."""
    epsilon: float = field(default=0.2, metadata=number(0.0, 10.0, lo_open=True))
    """Ratio clip range, used when num_iterations > 1."""
    max_prompt_length: int = field(default=512, metadata=integer(1, 1 << 20))
    """Prompts are cut from the left to this many tokens."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings, metadata=nested(SamplingSettings))
    """How completions are sampled."""

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.num_generations

    def check_examples(self, n: int) -> None:
        """trl samples whole batches of prompts (a step's groups), so the file must hold batch_size prompts."""
        if n < self.batch_size:
            raise ConfigError("batch_size", f"is {self.batch_size} prompts per step but the training file has "
                              f"{n} prompts; use a batch_size of at most {n}")


@dataclass(frozen=True)
class RLOOConfig(_GroupConfig, method="rloo", data="prompts", recipe="ml.rl.online:run_rloo",
                 inputs={"reward_model": "reward_model"}):
    """REINFORCE leave-one-out: a response's baseline is the mean reward of the other responses to its prompt."""


@dataclass(frozen=True)
class GRPOConfig(_GroupConfig, method="grpo", data="prompts", recipe="ml.rl.online:run_grpo",
                 inputs={"reward_model": "reward_model"}):
    """Group relative policy optimisation: rewards standardised within each prompt's group of responses."""

    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = field(
        default="dapo", metadata=choice("grpo", "dapo", "dr_grpo", "bnpo")
    )
    """How token losses are averaged ("dapo", trl's default, normalises over all tokens of the batch)."""
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group", metadata=choice("group", "batch", "none")
    )
    """Divide advantages by the reward std of the group, of the batch, or not at all."""

