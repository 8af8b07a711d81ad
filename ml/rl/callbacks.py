"""SinkCallback for trl's preference and online trainers: also forwards their method-specific metrics.

ml.train.callbacks.SinkCallback reports train/valid loss, learning rate and throughput, polls
cancel/pause and reports checkpoints. trl's RewardTrainer, DPOTrainer, RLOOTrainer and GRPOTrainer log
more (pairwise accuracy, reward margins, KL, mean reward...); this subclass renames the ones worth
showing and sends them with the same step. It adds no control logic of its own.
"""

from __future__ import annotations

import math

from transformers import TrainerControl, TrainerState, TrainingArguments

from ml.events import JobSink
from ml.train.callbacks import SinkCallback

# trl log key -> metric name sent to the sink. Evaluation keys arrive as "eval_<key>" and are sent as
# "valid_<name>".
REWARD_METRICS = {"accuracy": "accuracy", "margin": "margin", "mean_reward": "mean_reward"}
DPO_METRICS = {
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "margin",
    "rewards/accuracies": "accuracy",
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
}
ONLINE_METRICS = {
    "reward": "mean_reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "entropy": "entropy",
    "clip_ratio/region_mean": "clipfrac",
    "completions/mean_length": "response_length",
    "completions/clipped_ratio": "truncated_fraction",
}


class RLSinkCallback(SinkCallback):
    """SinkCallback that also sends the trl metrics named in `names` (trl key -> sink name)."""

    def __init__(
        self, sink: JobSink, names: dict[str, str], n_examples: int | None = None, save_at_end: bool = True
    ):
        super().__init__(sink, n_examples=n_examples, save_at_end=save_at_end)
        self.names = names
        self._extra: dict[str, float] = {}

    def _pick(self, logs: dict, prefix: str, out_prefix: str) -> dict[str, float]:
        picked = {}
        for key, name in self.names.items():
            v = logs.get(prefix + key)
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                picked[out_prefix + name] = float(v)
        return picked

    def _emit(self, state: TrainerState, step: int, values: dict[str, float]) -> None:
        extra, self._extra = self._extra, {}
        super()._emit(state, step, {**values, **extra})

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            self._extra.update(self._pick(logs, "", ""))
        else:
            # Evaluation logs arrive just before on_evaluate, which sends them along with valid_loss.
            self._extra.update(self._pick(logs, "eval_", "valid_"))
        return super().on_log(args, state, control, logs=logs, **kw)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kw
    ):
        self._extra.update(self._pick(metrics or {}, "eval_", "valid_"))
        return super().on_evaluate(args, state, control, metrics=metrics, **kw)
