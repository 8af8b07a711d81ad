"""Every training method ChatForge runs, as declared by the config classes (see ml.config.MethodSpec).

Importing this module imports each config module, so METHODS is complete: supervised (ml.config), and
reward_model, dpo, ppo, rloo, grpo (ml.rl.config). A new method's config class goes in one of them.
"""

from __future__ import annotations

import ml.rl.config  # noqa: F401  (declares the RLHF methods)
from ml.config import METHODS, MethodSpec

__all__ = ["METHODS", "MethodSpec", "method_spec"]


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`; KeyError for an unknown method."""
    return METHODS[name]
