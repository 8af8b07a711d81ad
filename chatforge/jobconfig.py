"""From a job's `method` object (OpenAI's shape plus our settings) to the ml config dataclass.

One translation, used by the API when it validates a request and by the worker when it runs the job.
The dataclasses in ml.config / ml.rl.config stay the single definition of every hyperparameter.
"""

from __future__ import annotations

from typing import Any

from ml.config import ConfigError

METHOD_KINDS = {  # method type -> the kind of data its training file must hold
    "supervised": "sft",
    "dpo": "preference",
    "reward_model": "preference",
    "ppo": "prompts",
    "rloo": "prompts",
    "grpo": "prompts",
}
ONLINE_RL = ("ppo", "rloo", "grpo")
NOT_HYPERPARAMETERS = ("reward_model",)  # method settings that name inputs rather than tune training


def config_class(method: str):
    from ml.config import SupervisedConfig
    from ml.rl.config import DPOConfig, GRPOConfig, PPOConfig, RewardModelConfig, RLOOConfig

    return {"supervised": SupervisedConfig, "dpo": DPOConfig, "reward_model": RewardModelConfig,
            "ppo": PPOConfig, "rloo": RLOOConfig, "grpo": GRPOConfig}[method]


def _accepts_auto(cls, name: str) -> bool:
    return "auto" in str(cls.__dataclass_fields__[name].type).lower()


def flatten_method(method_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """{"hyperparameters": {...}, other settings...} -> the flat dict the ml config takes.

    "auto" on a field that has no auto mode means the config's default. OpenAI's
    `learning_rate_multiplier` scales the method's default learning rate where the config has no
    multiplier of its own. {"adapter": "qlora", "bits": 4} is shorthand for quant.bits. For PPO,
    OpenAI's `batch_size` means rollouts_per_step (RLOO/GRPO read it as prompts per step).
    """
    cls = config_class(method_type)
    names = cls.__dataclass_fields__
    body = dict(body or {})
    flat = {**{k: v for k, v in body.items() if k != "hyperparameters" and k not in NOT_HYPERPARAMETERS},
            **(body.get("hyperparameters") or {})}
    if "bits" in flat:
        flat["quant"] = {**(flat.get("quant") or {}), "bits": flat.pop("bits")}
    if "learning_rate_multiplier" in flat and "learning_rate_multiplier" not in names:
        mult = flat.pop("learning_rate_multiplier")
        if mult != "auto":
            if not isinstance(mult, (int, float)) or isinstance(mult, bool) or not 0 < mult <= 100:
                raise ConfigError("learning_rate_multiplier", f'must be a number in (0, 100] or "auto", got {mult!r}')
            flat.setdefault("learning_rate", names["learning_rate"].default * mult)
    for key in [k for k, v in flat.items() if v == "auto" and (k not in names or not _accepts_auto(cls, k))]:
        flat.pop(key)
    if method_type == "ppo" and "batch_size" in flat:  # OpenAI's batch_size is PPO's rollouts per step
        size = flat.pop("batch_size")
        if flat.setdefault("rollouts_per_step", size) != size:
            raise ConfigError("batch_size", f"is PPO's rollouts_per_step; got batch_size {size!r} and "
                              f"rollouts_per_step {flat['rollouts_per_step']!r}: set one of them")
    return flat


def build_config(method_type: str, body: dict[str, Any]):
    """The ml config for a method body; ConfigError params are prefixed "method.<type>."."""
    try:
        return config_class(method_type).from_dict(flatten_method(method_type, body))
    except ConfigError as e:
        raise e.under(f"method.{method_type}") from None
    except TypeError as e:
        raise ConfigError(f"method.{method_type}", str(e)) from None


def config_for(method: dict[str, Any]):
    mtype = method.get("type", "supervised")
    return build_config(mtype, method.get(mtype) or {})
