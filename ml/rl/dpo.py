"""DPO recipe: canonical preference pairs in, a PEFT adapter (or full model) folder out, like SFT's.

run_dpo starts from a base or SFT model (an SFT adapter is merged into its base first), adds a fresh
LoRA and trains it with trl's DPOTrainer; with no ref_model and a PEFT policy trl uses the same weights
with the adapter disabled as the frozen reference, so there is no second copy. The pairs are tokenised
by ml.data.render (trl's own tokenisation is skipped). The saved adapter is relative to the original
base: an SFT adapter start is folded in (ml.rl.start.write_policy_adapter), so serving loads it as any.
"""

from __future__ import annotations

from pathlib import Path

import torch
import trl

from ml.events import JobSink
from ml.rl.callbacks import DPO_METRICS
from ml.rl.config import DPOConfig
from ml.rl.preferences import load_preference_splits
from ml.rl.recipe import RLRun
from ml.rl.result import RLResult
from ml.rl.start import load_start_causal_lm, policy_writer
from ml.train.checkpoints import AtomicCheckpointMixin
from ml.train.trainable import lora_config

_TOKENISED = {"prompt_ids", "chosen_ids", "rejected_ids"}


class _DPOTrainer(AtomicCheckpointMixin, trl.DPOTrainer):
    """DPOTrainer that takes rows already tokenised by ml.data.render as they are."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if _TOKENISED <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


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


def run_dpo(cfg: DPOConfig, base_model: Path, train_file: Path, valid_file: Path | None, output_dir: Path,
            sink: JobSink, resume: bool = True) -> RLResult:
    """DPO on a canonical preference file. Output: output_dir/model (adapter or full model + tokenizer).

    Checkpoints go to output_dir/checkpoints; resume=True continues from the newest complete one.
    "pause" checkpoints and returns status "paused"; "cancel" returns "cancelled" without saving.
    """
    run = RLRun.begin("dpo", cfg, base_model, output_dir, sink, resume)
    train, valid = load_preference_splits(run.tokenizer, train_file, valid_file, cfg.max_length, sink)
    model = load_start_causal_lm(run.start)
    trainer, outcome = run.fit(
        _DPOTrainer,
        trl.DPOConfig,
        model,
        DPO_METRICS,
        train.dpo_rows(),
        valid.dpo_rows() if valid else None,
        method_fields={
            "beta": cfg.beta,
            "loss_type": [cfg.loss_type],
            "label_smoothing": cfg.label_smoothing,
            "max_length": None,  # already cut to cfg.max_length by render_preference (prompt side first)
            "disable_dropout": True,
            "precompute_ref_log_probs": False,
        },
        ready=f"; beta {cfg.beta}",
        # Full fine-tuning needs its own frozen reference; LoRA uses the policy with the adapter disabled.
        ref_model=load_start_causal_lm(run.start) if cfg.adapter == "full" else None,
        peft_config=lora_config(cfg.lora) if cfg.adapter == "lora" else None,
    )
    if not outcome.succeeded:
        return run.result(outcome)
    final = run.save(policy_writer(trainer.model, run.start, cfg.adapter), cfg.adapter, outcome.steps,
                     metrics=outcome.metrics)
    what = "adapter" if cfg.adapter == "lora" else "model"
    sink.log(f"Saved the DPO {what}.", data={"path": str(final)})
    return run.result(outcome, final)
