"""DPO recipe: canonical preference pairs in, a PEFT adapter (or full model) folder out, like SFT's.

run_dpo starts from a base or SFT model (an SFT adapter is merged into its base first), adds a fresh
LoRA and trains it with trl's DPOTrainer; with no ref_model and a PEFT policy trl uses the same weights
with the adapter disabled as the frozen reference, so there is no second copy. The pairs are tokenised
by ml.data.render (trl's own tokenisation is skipped). The saved adapter is relative to the original
base: an SFT adapter start is folded in (ml.rl.start.write_policy_adapter), so serving loads it as any.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
import trl

from ml.events import JobSink
from ml.records import DataError
from ml.rl.callbacks import DPO_METRICS, RLSinkCallback, quiet_console
from ml.rl.config import DPOConfig
from ml.rl.preferences import PreferenceSplit, load_preferences
from ml.rl.result import CHECKPOINTS, FINAL, RLResult
from ml.rl.start import load_start_causal_lm, load_start_tokenizer, resolve_start, write_policy_adapter
from ml.rl.trainer_args import trl_args
from ml.train.callbacks import evaluate_final
from ml.train.checkpoints import AtomicCheckpointMixin, clean_partial, complete_checkpoints, latest_checkpoint
from ml.train.trainable import count_parameters, lora_config, save_trained

_TOKENISED = {"prompt_ids", "chosen_ids", "rejected_ids"}


class _DPOTrainer(AtomicCheckpointMixin, trl.DPOTrainer):
    """DPOTrainer that takes rows already tokenised by ml.data.render as they are."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if _TOKENISED <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


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


@torch.no_grad()
def sequence_logps(model, rows: list[dict[str, list[int]]], key: str) -> list[float]:
    """Sum of log p(completion tokens | prompt) for rows[i]["prompt_ids"] + rows[i][key], one at a time."""
    from ml.rl.ppo_math import logprobs_from_logits

    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    try:
        for r in rows:
            ids = torch.tensor([r["prompt_ids"] + r[key]], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[:, len(r["prompt_ids"]) - 1 : -1]
            out.append(float(logprobs_from_logits(logits, ids[:, len(r["prompt_ids"]) :]).sum()))
    finally:
        model.train(was_training)
    return out


def run_dpo(
    cfg: DPOConfig,
    base_model: Path,
    train_file: Path,
    valid_file: Path | None,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
) -> RLResult:
    """DPO on a canonical preference file. Output: output_dir/model (adapter or full model + tokenizer).

    Checkpoints go to output_dir/checkpoints; resume=True continues from the newest complete one.
    "pause" checkpoints and returns status "paused"; "cancel" returns "cancelled" without saving.
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
        valid = valid if len(valid) else None

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(ckpt_dir)
    if not resume:
        for _, p in complete_checkpoints(ckpt_dir):
            shutil.rmtree(p)
    start_from = latest_checkpoint(ckpt_dir) if resume else None

    torch.manual_seed(cfg.seed)
    model = load_start_causal_lm(start)
    # Full fine-tuning needs its own frozen reference; LoRA uses the policy with the adapter disabled.
    ref_model = load_start_causal_lm(start) if cfg.adapter == "full" else None
    args = trl_args(
        trl.DPOConfig,
        cfg,
        ckpt_dir,
        valid is not None,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
        max_length=None,  # already cut to cfg.max_length by render_preference (prompt side first)
        disable_dropout=True,
        precompute_ref_log_probs=False,
    )
    callback = RLSinkCallback(sink, DPO_METRICS, n_examples=len(train))
    trainer = _DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(train.dpo_rows()),
        eval_dataset=Dataset.from_list(valid.dpo_rows()) if valid else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora) if cfg.adapter == "lora" else None,
        callbacks=[callback],
    )
    quiet_console(trainer)
    trainable, total = count_parameters(trainer.model)
    sink.log(
        f"DPO policy ready: {cfg.adapter}, {trainable:,} of {total:,} parameters trainable; beta {cfg.beta}.",
        data={"trainable_params": trainable, "total_params": total, "config": cfg.to_dict()},
    )
    trainer.checkpoint_info = {"base_model": str(start.base), "method": "dpo"}
    trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)
    evaluate_final(trainer, callback)

    state = trainer.state
    common = {
        "method": "dpo",
        "base_model": start.base,
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "metrics": dict(callback.last_metrics),
        "checkpoint": latest_checkpoint(ckpt_dir),
        "config": cfg,
    }
    if callback.stopped is not None:
        return RLResult(
            status="paused" if callback.stopped == "pause" else "cancelled", model_dir=None, **common
        )

    policy = trainer.model
    if cfg.adapter == "lora":

        def write(folder: str) -> None:
            write_policy_adapter(policy, start, folder)
    else:

        def write(folder: str) -> None:
            policy.save_pretrained(folder)

    meta = {
        "base_model": str(start.base),
        "started_from": str(base_model),
        "method": "dpo",
        "adapter": cfg.adapter,
        "is_adapter": cfg.adapter == "lora",
        "step": state.global_step,
        "metrics": common["metrics"],
        "config": cfg.to_dict(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    final = save_trained(output_dir / FINAL, tokenizer, meta, write)
    sink.log(
        f"Saved the DPO {'adapter' if cfg.adapter == 'lora' else 'model'} to {final}.",
        data={"path": str(final)},
    )
    return RLResult(status="succeeded", model_dir=final, **common)
