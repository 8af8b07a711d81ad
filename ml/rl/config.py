"""Hyperparameters of the RLHF recipes (reward model, DPO, PPO, RLOO, GRPO) as frozen dataclasses.

Owns one config class per method, a docstring per field, the checks that run on construction (raising
ml.config.ConfigError with a dotted param name) and their dict form. LoRA shape is ml.config's
LoraSettings, shared with SFT. Paths to data and models are not hyperparameters: the run_* functions
take them as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ml.config import AUTO, SCHEDULERS, Auto, ConfigError, LoraSettings, Scheduler
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


def _int_or_auto(name: str, v: Any, lo: int, hi: int) -> None:
    if v != AUTO:
        _int(name, v, lo, hi)


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> None:
    if not (isinstance(v, int) and not isinstance(v, bool)) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(name, f"must be an integer {rng}, got {v!r}")


def _num(
    name: str, v: Any, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(name, f"must be a number in {bound}, got {v!r}")


def _choice(name: str, v: Any, options: tuple) -> None:
    if v not in options:
        raise ConfigError(name, f"must be one of {', '.join(map(repr, options))}, got {v!r}")


def _bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(name, f"must be true or false, got {v!r}")


def _nested(obj: Any, name: str, cls: type) -> None:
    if not isinstance(getattr(obj, name), cls):
        raise ConfigError(name, f"must be {cls.__name__}")


@dataclass(frozen=True)
class SamplingSettings(_DictForm):
    """How the policy samples responses during online RL (PPO, RLOO, GRPO)."""

    max_new_tokens: int = 64
    """Longest response in tokens; longer ones are cut there."""
    temperature: float = 1.0
    """Softmax temperature; the training log-probs are taken at the same temperature."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling: smallest set of tokens with this much probability mass (1.0: off)."""

    def __post_init__(self) -> None:
        _int("max_new_tokens", self.max_new_tokens, 1, 1 << 16)
        _num("temperature", self.temperature, 0.0, 10.0, lo_open=True)
        _int("top_k", self.top_k, 0)
        _num("top_p", self.top_p, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class _TrainerConfig(_DictForm):
    """Fields shared by the recipes that run on a Hugging Face trainer (reward model, DPO, RLOO, GRPO)."""

    adapter: Adapter = "lora"
    """"lora": train a small adapter (the frozen reference is the same weights with it disabled);
    "full": train every weight (DPO/RLOO/GRPO then keep a second, frozen copy as the reference)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapter shape when adapter == "lora"."""
    n_epochs: int = 1
    """Passes over the training file (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides n_epochs)."""
    batch_size: int = 8
    """Examples per optimizer step (preference pairs; prompts for RLOO/GRPO)."""
    micro_batch_size: int | Auto = AUTO
    """Examples per forward pass (memory knob); must divide the examples of a step, the rest is accumulated.
    "auto": the largest divisor of them up to 8."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    lr_scheduler: Scheduler = "linear"
    """Decay after warm-up: "linear", "cosine", "constant" or "constant_with_warmup"."""
    warmup_ratio: float = 0.0
    """Fraction of all steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    bf16: bool = False
    """bfloat16 autocast. Off by default because trl's configs turn it on, which on CPU really runs bf16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower). trl defaults to on; here off."""
    eval_interval: int | None = None
    """Optimizer steps between validation evaluations (None: at the end of each epoch)."""
    checkpoint_interval: int = 50
    """Optimizer steps between checkpoints (a checkpoint is also written on pause)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    seed: int = 42
    """Seed for data order, adapter initialisation and sampling."""

    _nested: ClassVar[dict[str, type]] = {"lora": LoraSettings}

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

    def _check_micro_batch(self) -> None:
        _int_or_auto("micro_batch_size", self.micro_batch_size, 1, 4096)
        n = self.examples_per_step
        if self.micro_batch_size != AUTO and n % self.micro_batch_size:
            what = f"batch_size {self.batch_size}" if n == self.batch_size else f"the {n} completions per step"
            raise ConfigError("micro_batch_size", f"must divide {what}, got {self.micro_batch_size}")

    def __post_init__(self) -> None:
        _choice("adapter", self.adapter, ("lora", "full"))
        _nested(self, "lora", LoraSettings)
        _int("n_epochs", self.n_epochs, 1, 1000)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        _int("batch_size", self.batch_size, 1, 4096)
        _num("learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _num("warmup_ratio", self.warmup_ratio, 0.0, 0.5)
        _num("weight_decay", self.weight_decay, 0.0, 1.0)
        _num("max_grad_norm", self.max_grad_norm, 0.0, 1e6, lo_open=True)
        _bool("bf16", self.bf16)
        _bool("gradient_checkpointing", self.gradient_checkpointing)
        if self.eval_interval is not None:
            _int("eval_interval", self.eval_interval, 1)
        _int("checkpoint_interval", self.checkpoint_interval, 1)
        _int("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        _int("seed", self.seed, 0, 2**32 - 1)
        self._check_micro_batch()


@dataclass(frozen=True)
class RewardModelConfig(_TrainerConfig):
    """Reward model: a 1-label sequence classifier trained with the pairwise loss -log sigmoid(r_c - r_r).

    With adapter "lora" the score head is trained in full next to the adapter (peft modules_to_save).
    """

    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    max_length: int = 1024
    """Longest prompt + reply in tokens; the prompt is cut from the left to fit."""
    center_rewards_coefficient: float | None = None
    """Weight of a penalty pulling rewards towards mean zero (0.01 is usual; None: off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _int("max_length", self.max_length, 16, 1 << 20)
        if self.center_rewards_coefficient is not None:
            _num("center_rewards_coefficient", self.center_rewards_coefficient, 0.0, 10.0)


DPOLoss = Literal["sigmoid", "ipo", "hinge", "robust"]


@dataclass(frozen=True)
class DPOConfig(_TrainerConfig):
    """Direct preference optimisation against the frozen starting model."""

    learning_rate: float = 5e-6
    """Peak AdamW learning rate (DPO wants small ones; LoRA tolerates ~10x more)."""
    beta: float = 0.1
    """Strength of the implicit KL to the reference: higher keeps the model closer to it."""
    loss_type: DPOLoss = "sigmoid"
    """"sigmoid" (the DPO paper), "ipo", "hinge" (SLiC) or "robust" (with label_smoothing)."""
    label_smoothing: float = 0.0
    """Assumed probability that a preference label is flipped (robust / conservative DPO)."""
    max_length: int = 1024
    """Longest prompt + reply in tokens; the prompt is cut from the left to fit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _num("beta", self.beta, 0.0, 100.0, lo_open=True)
        _choice("loss_type", self.loss_type, ("sigmoid", "ipo", "hinge", "robust"))
        _num("label_smoothing", self.label_smoothing, 0.0, 0.5, hi_open=True)
        _int("max_length", self.max_length, 16, 1 << 20)


@dataclass(frozen=True)
class PPOConfig(_DictForm):
    """PPO: LoRA policy + value head, per-token KL penalty to the frozen starting model, reward at the end."""

    steps: int = 100
    """PPO steps; each samples rollouts_per_step responses, then updates on them."""
    rollouts_per_step: int = 16
    """Prompts sampled (one response each) per PPO step. OpenAI's `batch_size` sets this."""
    minibatch_size: int | Auto = AUTO
    """Rollouts per optimizer step inside the update; must divide rollouts_per_step. "auto": the largest
    divisor of rollouts_per_step up to 4."""
    ppo_epochs: int = 2
    """Passes over one step's rollouts."""
    learning_rate: float = 1e-5
    """AdamW learning rate for the adapter and the value head (constant)."""
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty r_t = -kl_coef * (logp - logp_ref)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Policy ratio clip: tokens whose ratio left [1 - c, 1 + c] in the favourable direction stop
    getting gradient."""
    clip_range_value: float = 0.2
    """Value clip: a new value may move this far from the rollout's value before it stops getting gradient."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0 / std 1 over each step's response tokens."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a response cut at max_new_tokens without ending (None: off)."""
    max_prompt_length: int = 512
    """Prompts are cut from the left to this many tokens."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """How rollouts are sampled."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Policy adapter (the reference is the same weights with it disabled)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    bf16: bool = False
    """bfloat16 autocast for forward passes (weights and optimizer stay fp32)."""
    checkpoint_interval: int = 10
    """PPO steps between checkpoints (a checkpoint is also written on pause and at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    seed: int = 42
    """Seed for prompt order, adapter and value-head initialisation, and sampling."""

    _nested: ClassVar[dict[str, type]] = {"sampling": SamplingSettings, "lora": LoraSettings}

    @property
    def batch_size(self) -> int:
        """OpenAI's name for the rollouts of one step (shown in the job's hyperparameters)."""
        return self.rollouts_per_step

    @property
    def resolved_minibatch_size(self) -> int:
        if self.minibatch_size == AUTO:
            return largest_divisor(self.rollouts_per_step, PPO_MINIBATCH_DEFAULT)
        return self.minibatch_size

    def __post_init__(self) -> None:
        _nested(self, "sampling", SamplingSettings)
        _nested(self, "lora", LoraSettings)
        _int("steps", self.steps, 1)
        _int("rollouts_per_step", self.rollouts_per_step, 1, 4096)
        _int_or_auto("minibatch_size", self.minibatch_size, 1, 4096)
        if self.minibatch_size != AUTO and self.rollouts_per_step % self.minibatch_size:
            raise ConfigError(
                "minibatch_size",
                f"must divide rollouts_per_step {self.rollouts_per_step}, got {self.minibatch_size}",
            )
        _int("ppo_epochs", self.ppo_epochs, 1, 100)
        _num("learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _num("kl_coef", self.kl_coef, 0.0, 100.0)
        _num("gamma", self.gamma, 0.0, 1.0)
        _num("lam", self.lam, 0.0, 1.0)
        _num("clip_range", self.clip_range, 0.0, 10.0, lo_open=True)
        _num("clip_range_value", self.clip_range_value, 0.0, 1e6, lo_open=True)
        _num("vf_coef", self.vf_coef, 0.0, 100.0)
        _bool("whiten_advantages", self.whiten_advantages)
        if self.missing_eos_penalty is not None:
            _num("missing_eos_penalty", self.missing_eos_penalty, 0.0, 1e6)
        _int("max_prompt_length", self.max_prompt_length, 1, 1 << 20)
        _num("max_grad_norm", self.max_grad_norm, 0.0, 1e6, lo_open=True)
        _bool("bf16", self.bf16)
        _int("checkpoint_interval", self.checkpoint_interval, 1)
        _int("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        _int("seed", self.seed, 0, 2**32 - 1)


@dataclass(frozen=True)
class _GroupConfig(_TrainerConfig):
    """Fields shared by RLOO and GRPO (trl's online trainers: several samples per prompt, no critic)."""

    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    batch_size: int = 2
    """Prompts per optimizer step (as in OpenAI's reinforcement fine-tuning); each gets num_generations
    completions, so a step trains on batch_size * num_generations completions."""
    micro_batch_size: int | Auto = AUTO
    """Completions per forward pass; must divide batch_size * num_generations. "auto": the largest divisor
    of that up to 8."""
    num_generations: int = 4
    """Responses sampled per prompt; each is judged against the others for the same prompt."""
    beta: float = 0.05
    """Weight of the KL to the reference (0 skips the reference forward pass)."""
    num_iterations: int = 1
    """Updates per batch of generations (> 1 re-uses them with ratio clipping)."""
    epsilon: float = 0.2
    """Ratio clip range, used when num_iterations > 1."""
    max_prompt_length: int = 512
    """Prompts are cut from the left to this many tokens."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """How completions are sampled."""

    _nested: ClassVar[dict[str, type]] = {"lora": LoraSettings, "sampling": SamplingSettings}

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.num_generations

    def __post_init__(self) -> None:
        _int("num_generations", self.num_generations, 2, 256)
        super().__post_init__()
        _nested(self, "sampling", SamplingSettings)
        _num("beta", self.beta, 0.0, 100.0)
        _int("num_iterations", self.num_iterations, 1, 100)
        _num("epsilon", self.epsilon, 0.0, 10.0, lo_open=True)
        _int("max_prompt_length", self.max_prompt_length, 1, 1 << 20)


@dataclass(frozen=True)
class RLOOConfig(_GroupConfig):
    """REINFORCE leave-one-out: a response's baseline is the mean reward of the other responses to its prompt."""


@dataclass(frozen=True)
class GRPOConfig(_GroupConfig):
    """Group relative policy optimisation: rewards standardised within each prompt's group of responses."""

    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    """How token losses are averaged ("dapo", trl's default, normalises over all tokens of the batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward std of the group, of the batch, or not at all."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("loss_type", self.loss_type, ("grpo", "dapo", "dr_grpo", "bnpo"))
        _choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring for an RL config class, inherited fields included (for API schemas)."""
    from ml.config import config_field_docs

    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base.__module__ == __name__ and "__dataclass_fields__" in base.__dict__:
            docs.update(config_field_docs(base))
    return docs
