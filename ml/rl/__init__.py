"""RLHF recipes: reward model, DPO, PPO, RLOO, GRPO. Pure ML: paths, configs and a JobSink in, a result out.

Configs (ml.rl.config) import nothing heavy, so the API can build schemas from them; the recipes import
trl/peft lazily through this package's attributes:

    from ml.rl import run_reward_model, run_dpo, run_ppo, run_rloo, run_grpo
    from ml.rl import load_reward_model, score
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_reward_model": "ml.rl.reward",
    "run_dpo": "ml.rl.dpo",
    "run_ppo": "ml.rl.ppo",
    "run_rloo": "ml.rl.online",
    "run_grpo": "ml.rl.online",
    "run_online": "ml.rl.online",
    "load_reward_model": "ml.rl.reward_model",
    "score": "ml.rl.reward_model",
    "RLResult": "ml.rl.result",
    "RewardModelConfig": "ml.rl.config",
    "DPOConfig": "ml.rl.config",
    "PPOConfig": "ml.rl.config",
    "RLOOConfig": "ml.rl.config",
    "GRPOConfig": "ml.rl.config",
    "SamplingSettings": "ml.rl.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ml.rl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
