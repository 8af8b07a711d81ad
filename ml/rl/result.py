"""What an RLHF recipe returns, shaped like ml.train.sft.TrainResult so workers record both the same way.

Owns the RLResult dataclass and the names of the RL methods; the output layout is ml.train.recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ml.train.recipe import Status

Method = Literal["reward_model", "dpo", "ppo", "rloo", "grpo"]


@dataclass(frozen=True)
class RLResult:
    status: Status
    method: Method
    # The trained folder; None unless succeeded. A PEFT adapter over `base_model` (dpo/ppo/rloo/grpo with
    # adapter "lora"), a full causal LM (adapter "full"), or a reward-model folder (reward_model).
    model_dir: Path | None
    base_model: Path
    steps: int
    total_steps: int
    # Last reported numbers; reward models add valid_accuracy / valid_margin measured on the saved model.
    metrics: dict[str, float] = field(default_factory=dict)
    # Newest complete checkpoint (what a paused run resumes from).
    checkpoint: Path | None = None
    config: Any = None

    @property
    def is_adapter(self) -> bool:
        return self.model_dir is not None and (self.model_dir / "adapter_config.json").exists()
