"""Reward-model recipe: canonical preference pairs in, a folder that scores conversations out.

run_reward_model builds a 1-label sequence classifier from a base or SFT model (LoRA with the score head
trained in full, or every weight), trains it with trl's RewardTrainer (pairwise loss, atomic
checkpoints, resume, JobSink), merges the LoRA into the weights and saves a self-contained model
folder (see ml.rl.reward_model), then measures pairwise accuracy and mean margin on the validation
file with the saved model. Scoring for the API and online RL is ml.rl.reward_model.score.
"""

from __future__ import annotations

from pathlib import Path

from trl import RewardConfig, RewardTrainer

from ml.events import JobSink
from ml.rl.callbacks import REWARD_METRICS
from ml.rl.config import RewardModelConfig
from ml.rl.preferences import PreferenceSplit, load_preference_splits
from ml.rl.recipe import RLRun
from ml.rl.result import RLResult
from ml.rl.reward_model import REWARD_MODEL_KIND, load_reward_model, score_ids
from ml.rl.start import load_start_sequence_classifier
from ml.train.checkpoints import AtomicCheckpointMixin, read_metadata, write_metadata
from ml.train.trainable import lora_config


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


def run_reward_model(cfg: RewardModelConfig, base_model: Path, train_file: Path, valid_file: Path | None,
                     output_dir: Path, sink: JobSink, resume: bool = True) -> RLResult:
    """Train a reward model on a canonical preference file; the result folder is output_dir/model.

    `base_model` is a full model folder or an SFT LoRA output (merged into its base first). The saved
    folder is a complete sequence-classification model (LoRA merged), loadable with
    ml.rl.reward_model.load_reward_model. result.metrics carries valid_accuracy / valid_margin (and
    train_accuracy on the training pairs) measured with the saved model.
    """
    run = RLRun.begin("reward_model", cfg, base_model, output_dir, sink, resume)
    tokenizer = run.tokenizer
    train, valid = load_preference_splits(tokenizer, train_file, valid_file, cfg.max_length, sink)
    model = load_start_sequence_classifier(run.start)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if cfg.adapter == "lora":
        peft_config = lora_config(cfg.lora, task_type="SEQ_CLS")
        peft_config.modules_to_save = ["score"]
    trainer, outcome = run.fit(
        _RewardTrainer,
        RewardConfig,
        model,
        REWARD_METRICS,
        train.reward_rows(),
        valid.reward_rows() if valid else None,
        method_fields={
            "max_length": None,  # already cut to cfg.max_length by render_preference (prompt side first)
            "center_rewards_coefficient": cfg.center_rewards_coefficient,
            "disable_dropout": True,
        },
        peft_config=peft_config,
    )
    if not outcome.succeeded:
        return run.result(outcome)

    trained = trainer.model.merge_and_unload() if cfg.adapter == "lora" else trainer.model
    trained.config.pad_token_id = tokenizer.pad_token_id
    final = run.save(trained.save_pretrained, cfg.adapter, outcome.steps, kind=REWARD_MODEL_KIND,
                     is_adapter=False, max_length=cfg.max_length)

    # Measure with the folder just written: what the API and PPO will load is what gets reported.
    saved, saved_tok = load_reward_model(final)
    metrics = {k: v for k, v in outcome.metrics.items() if k in ("train_loss", "valid_loss")}
    splits = (("train", train, TRAIN_EVAL_PAIRS), ("valid", valid, None))
    for name, split, limit in splits:
        if split is not None:
            pairs = evaluate_pairs(saved, saved_tok.pad_token_id, split, limit=limit)
            metrics.update({f"{name}_{k}": v for k, v in pairs.items()})
    sink.metrics(outcome.steps, metrics, outcome.total_steps)
    write_metadata(final, {**(read_metadata(final) or {}), "metrics": metrics})
    summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    sink.log(f"Saved the reward model ({summary}).", data={"path": str(final), "metrics": metrics})
    return run.result(outcome, final, metrics)
