"""What the RLHF recipes share on top of ml.train.recipe: the start point, trl trainers, the result.

Owns RLRun: resolving where a run starts (a full model or an SFT adapter, ml.rl.start) and its
tokenizer, seeding, the trl config of a trainer-based RL config (trl_args), running a trl trainer with
the RL sink callback and resume checks (RLRun.fit), the result folder with its chatforge.json
(RLRun.save) and the RLResult. A recipe (ml.rl.reward, ml.rl.dpo, ml.rl.online, ml.rl.ppo) declares
only its data, model(s), trainer class, trl fields and what it writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ml.events import JobSink
from ml.rl.callbacks import RLSinkCallback
from ml.rl.config import _TrainerConfig
from ml.rl.result import Method, RLResult
from ml.rl.start import StartPoint, load_start_tokenizer, resolve_start
from ml.train.recipe import (
    FINAL,
    Outcome,
    fit,
    log_model_ready,
    open_checkpoints,
    result_metadata,
    run_identity,
    training_args,
)
from ml.train.trainable import save_trained


def trl_args(config_cls: type, cfg: _TrainerConfig, ckpt_dir: Path, has_valid: bool, **method_fields: Any):
    """A trl config of class `config_cls` for `cfg`, checkpointing into `ckpt_dir`."""
    return training_args(
        config_cls, cfg, ckpt_dir, has_valid,
        micro_batch_size=cfg.resolved_micro_batch_size,
        learning_rate=cfg.learning_rate,
        checkpointing=cfg.gradient_checkpointing,
        **method_fields,
    )


@dataclass(frozen=True)
class RLRun:
    """One RLHF run: its method, config, start point and output folder."""

    method: Method
    cfg: Any
    started_from: Path  # the folder the caller named: a full model or an SFT adapter
    start: StartPoint
    tokenizer: Any
    output_dir: Path
    sink: JobSink
    resume: bool

    @classmethod
    def begin(
        cls, method: Method, cfg: Any, base_model: Path, output_dir: Path, sink: JobSink, resume: bool
    ) -> RLRun:
        """Resolve the start point, load its tokenizer and seed torch (initialisation is part of the run)."""
        start = resolve_start(base_model)
        torch.manual_seed(cfg.seed)
        tokenizer = load_start_tokenizer(start)
        return cls(method, cfg, Path(base_model), start, tokenizer, Path(output_dir), sink, resume)

    @property
    def identity(self) -> dict[str, Any]:
        """What this run's checkpoints record; a resume from a checkpoint of another run is refused."""
        return run_identity(self.start.base, self.cfg.to_dict(), method=self.method)

    def open_checkpoints(self) -> tuple[Path, Path | None]:
        return open_checkpoints(self.output_dir, self.resume, self.identity)

    def fit(
        self,
        trainer_cls: type,
        args_cls: type,
        model,
        metric_names: dict[str, str],
        train_rows: list[dict],
        valid_rows: list[dict] | None,
        method_fields: dict[str, Any],
        ready: str = "",
        eval_while_training: bool = True,
        **trainer_kwargs: Any,
    ):
        """Train `model` with trl's `trainer_cls` on already tokenised rows; returns (trainer, Outcome).

        `method_fields` go into the trl config of class `args_cls`; `trainer_kwargs` (peft_config,
        ref_model, reward_funcs...) into the trainer. `ready` is appended to the "policy ready" event.
        `valid_rows` are evaluated on cfg.eval_interval, or only after training if not eval_while_training."""
        from datasets import Dataset

        ckpt_dir, start_from = self.open_checkpoints()
        has_valid = bool(valid_rows) and eval_while_training
        callback = RLSinkCallback(self.sink, metric_names, n_examples=len(train_rows))
        trainer = trainer_cls(
            model=model,
            args=trl_args(args_cls, self.cfg, ckpt_dir, has_valid, **method_fields),
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(valid_rows) if valid_rows else None,
            processing_class=self.tokenizer,
            callbacks=[callback],
            **trainer_kwargs,
        )
        log_model_ready(self.sink, f"{self.title} ready: {self.cfg.adapter}", trainer.model, ready,
                        config=self.cfg.to_dict())
        return trainer, fit(trainer, callback, start_from, self.identity)

    @property
    def title(self) -> str:
        return "Reward model" if self.method == "reward_model" else f"{self.method.upper()} policy"

    def save(self, write: Callable[[str], None], adapter: str, step: int, **meta: Any) -> Path:
        """Write output_dir/model atomically: weights by `write`, tokenizer, chatforge.json (+ `meta`)."""
        metadata = result_metadata(
            self.method, self.start.base, adapter, step, self.cfg.to_dict(),
            started_from=str(self.started_from), **meta,
        )
        return save_trained(self.output_dir / FINAL, self.tokenizer, metadata, write)

    def result(
        self, outcome: Outcome, model_dir: Path | None = None, metrics: dict[str, float] | None = None
    ) -> RLResult:
        """The RLResult of `outcome`; `model_dir` once saved, `metrics` where the recipe measured more."""
        return RLResult(
            status=outcome.status,
            method=self.method,
            model_dir=model_dir,
            base_model=self.start.base,
            steps=outcome.steps,
            total_steps=outcome.total_steps,
            metrics=outcome.metrics if metrics is None else metrics,
            checkpoint=outcome.checkpoint,
            config=self.cfg,
        )
