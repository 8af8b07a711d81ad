"""Reward-model recipe: canonical preference pairs in, a folder that scores conversations out.

run_reward_model builds a 1-label sequence classifier from a base or SFT model (LoRA with the score head
trained in full, or every weight), trains it with trl's RewardTrainer (pairwise loss, atomic
checkpoints, resume, JobSink), merges the LoRA into the weights and saves a self-contained model
folder (see ml.rl.reward_model), then measures pairwise accuracy and mean margin on the validation
file with the saved model. Scoring for the API and online RL is ml.rl.reward_model.score.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
from trl import RewardConfig, RewardTrainer

from ml.events import JobSink
from ml.records import DataError
from ml.rl.callbacks import REWARD_METRICS, RLSinkCallback, quiet_console
from ml.rl.config import RewardModelConfig
from ml.rl.preferences import PreferenceSplit, load_preferences
from ml.rl.result import CHECKPOINTS, FINAL, RLResult
from ml.rl.reward_model import REWARD_MODEL_KIND, load_reward_model, score_ids
from ml.rl.start import load_start_sequence_classifier, load_start_tokenizer, resolve_start
from ml.rl.trainer_args import trl_args
from ml.train.checkpoints import (
    AtomicCheckpointMixin,
    clean_partial,
    complete_checkpoints,
    latest_checkpoint,
    read_metadata,
    write_metadata,
)
from ml.train.trainable import count_parameters, lora_config, save_trained


class _RewardTrainer(AtomicCheckpointMixin, RewardTrainer):
    pass


def pairwise_metrics(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Pairwise accuracy (chosen scored strictly higher) and mean margin (chosen - rejected)."""
    if not chosen:
        return {}
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "margin": sum(margins) / len(margins),
    }


# Training-set accuracy is measured on at most this many pairs (a sanity check, not a benchmark).
TRAIN_EVAL_PAIRS = 256


def evaluate_pairs(
    model, pad_token_id: int, split: PreferenceSplit, batch_size: int = 8, limit: int | None = None
) -> dict[str, float]:
    rows = split.reward_rows()[:limit]
    chosen = score_ids(model, pad_token_id, [r["chosen_ids"] for r in rows], batch_size)
    rejected = score_ids(model, pad_token_id, [r["rejected_ids"] for r in rows], batch_size)
    return pairwise_metrics(chosen, rejected)


def _log_split(sink: JobSink, name: str, split: PreferenceSplit) -> None:
    sink.log(
        f"{name} file: {split.describe()}.",
        data={
            "pairs": len(split),
            "tokens": split.n_tokens,
            "truncated": split.n_truncated,
            "skipped": split.n_skipped,
        },
    )


def run_reward_model(
    cfg: RewardModelConfig,
    base_model: Path,
    train_file: Path,
    valid_file: Path | None,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
) -> RLResult:
    """Train a reward model on a canonical preference file; the result folder is output_dir/model.

    `base_model` is a full model folder or an SFT LoRA output (merged into its base first). The saved
    folder is a complete sequence-classification model (LoRA merged), loadable with
    ml.rl.reward_model.load_reward_model. result.metrics carries valid_accuracy / valid_margin (and
    train_accuracy on the training pairs) measured with the saved model.
    """
    from datasets import Dataset

    base_model, output_dir = Path(base_model), Path(output_dir)
    ckpt_dir = output_dir / CHECKPOINTS
    start = resolve_start(base_model)
    tokenizer = load_start_tokenizer(start)
    train = load_preferences(tokenizer, train_file, cfg.max_length)
    if len(train) == 0:
        raise DataError("the training file has no usable preference pair")
    _log_split(sink, "Training", train)
    valid = load_preferences(tokenizer, valid_file, cfg.max_length) if valid_file else None
    if valid is not None:
        _log_split(sink, "Validation", valid)
        if len(valid) == 0:
            valid = None

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(ckpt_dir)
    if not resume:
        for _, p in complete_checkpoints(ckpt_dir):
            shutil.rmtree(p)
    start_from = latest_checkpoint(ckpt_dir) if resume else None

    torch.manual_seed(cfg.seed)
    model = load_start_sequence_classifier(start)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if cfg.adapter == "lora":
        peft_config = lora_config(cfg.lora, task_type="SEQ_CLS")
        peft_config.modules_to_save = ["score"]

    args = trl_args(
        RewardConfig,
        cfg,
        ckpt_dir,
        valid is not None,
        max_length=None,  # already cut to cfg.max_length by render_preference (prompt side first)
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        disable_dropout=True,
    )
    callback = RLSinkCallback(sink, REWARD_METRICS, n_examples=len(train))
    trainer = _RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train.reward_rows()),
        eval_dataset=Dataset.from_list(valid.reward_rows()) if valid else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    quiet_console(trainer)
    trainable, total = count_parameters(trainer.model)
    sink.log(
        f"Reward model ready: {cfg.adapter}, {trainable:,} of {total:,} parameters trainable.",
        data={"trainable_params": trainable, "total_params": total, "config": cfg.to_dict()},
    )
    trainer.checkpoint_info = {"base_model": str(start.base), "method": "reward_model"}
    trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)

    state = trainer.state
    common = {
        "method": "reward_model",
        "base_model": start.base,
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "config": cfg,
    }
    if callback.stopped is not None:
        return RLResult(
            status="paused" if callback.stopped == "pause" else "cancelled",
            model_dir=None,
            metrics=dict(callback.last_metrics),
            checkpoint=latest_checkpoint(ckpt_dir),
            **common,
        )

    trained = trainer.model
    if cfg.adapter == "lora":
        trained = trained.merge_and_unload()
    trained.config.pad_token_id = tokenizer.pad_token_id
    meta = {
        "kind": REWARD_MODEL_KIND,
        "method": "reward_model",
        "base_model": str(start.base),
        "started_from": str(base_model),
        "adapter": cfg.adapter,
        "is_adapter": False,
        "max_length": cfg.max_length,
        "step": state.global_step,
        "config": cfg.to_dict(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    final = save_trained(output_dir / FINAL, tokenizer, meta, lambda d: trained.save_pretrained(d))

    # Measure with the folder just written: what the API and PPO will load is what gets reported.
    saved, saved_tok = load_reward_model(final)
    metrics = {k: v for k, v in callback.last_metrics.items() if k in ("train_loss", "valid_loss")}
    metrics.update(
        {
            f"train_{k}": v
            for k, v in evaluate_pairs(saved, saved_tok.pad_token_id, train, limit=TRAIN_EVAL_PAIRS).items()
        }
    )
    if valid is not None:
        metrics.update(
            {f"valid_{k}": v for k, v in evaluate_pairs(saved, saved_tok.pad_token_id, valid).items()}
        )
    sink.metrics(state.global_step, metrics, state.max_steps)
    write_metadata(final, {**(read_metadata(final) or meta), "metrics": metrics})
    summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    sink.log(f"Saved the reward model to {final} ({summary}).", data={"path": str(final), "metrics": metrics})
    return RLResult(
        status="succeeded", model_dir=final, metrics=metrics, checkpoint=latest_checkpoint(ckpt_dir), **common
    )
