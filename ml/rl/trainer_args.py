"""Our RL configs -> trl config objects (RewardConfig, DPOConfig, RLOOConfig, GRPOConfig).

Owns the fields every trl-based recipe sets the same way: batch split, schedule, precision (trl turns
bf16 and gradient checkpointing on by default; we set both explicitly), eval/checkpoint cadence,
seeds, no reporting to external services, CPU when there is no GPU. Method-specific fields are passed
through by the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ml.rl.config import _TrainerConfig


def trl_args(config_cls: type, cfg: _TrainerConfig, ckpt_dir: Path, has_valid: bool, **method_fields: Any):
    """A trl config of class `config_cls` for `cfg`, checkpointing into `ckpt_dir`."""
    eval_every = "steps" if cfg.eval_interval else "epoch"
    return config_cls(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.resolved_micro_batch_size,
        per_device_eval_batch_size=cfg.resolved_micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        num_train_epochs=cfg.n_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of all steps in transformers 5
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy=eval_every if has_valid else "no",
        eval_steps=cfg.eval_interval if has_valid else None,
        save_strategy="steps",
        save_steps=cfg.checkpoint_interval,
        save_total_limit=cfg.keep_checkpoints,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **method_fields,
    )
