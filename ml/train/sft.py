"""Supervised fine-tuning recipe: canonical conversations in, a trained adapter or model folder out.

run_supervised renders the files with the chat template (loss only on learned assistant turns), builds
the model for the chosen adapter, and runs the Hugging Face Trainer with packed batches, atomic
checkpoints, resume from the newest complete checkpoint, and a JobSink for progress and cancel/pause.
It knows nothing about jobs, databases or HTTP; see ml.train.launch for a command-line entry.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ml.config import SupervisedConfig, resolve_auto
from ml.events import JobSink
from ml.models import load_tokenizer
from ml.records import DataError
from ml.train.batches import PackedCollator, PaddedCollator, TokenizedSplit, tokenize_file
from ml.train.callbacks import SinkCallback
from ml.train.checkpoints import AtomicCheckpointMixin, first_start_config
from ml.train.distributed import deepspeed_config, ensure_single_process_env, world_size
from ml.train.loss import learned_only_loss, supports_learned_only_loss
from ml.train.recipe import (
    CHECKPOINTS,
    FINAL,
    Status,
    fit,
    is_main,
    log_model_ready,
    open_checkpoints,
    result_metadata,
    run_identity,
    training_args,
)
from ml.train.retain import RetainSet, cached_retain_set, retain_loss
from ml.train.trainable import bf16_supported, load_trainable_model, runtime_report, save_trained


@dataclass(frozen=True)
class TrainResult:
    """What a supervised run produced."""

    status: Status
    # The trained folder (PEFT adapter for lora/qlora, safetensors model for full); None unless succeeded.
    model_dir: Path | None
    adapter: str
    steps: int
    total_steps: int
    # Tokens of the training examples processed (all epochs), like OpenAI's trained_tokens.
    trained_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    # Newest complete checkpoint (what a paused run resumes from).
    checkpoint: Path | None = None
    config: SupervisedConfig | None = None
    # What really ran (ml.train.trainable.runtime_report): engine, ZeRO stage, quantised layer counts.
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return self.adapter in ("lora", "qlora")


class SupervisedTrainer(AtomicCheckpointMixin, Trainer):
    """transformers Trainer with atomic checkpoints and exact token counting from the collator's n_tokens.

    With a RetainSet (ml.train.retain) and a weight, one micro-batch of each optimizer step also pays the
    replay penalty toward the base model's answers."""

    def __init__(self, *args, retain: RetainSet | None = None, retain_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.retain, self.retain_weight, self._retained_at = retain, retain_weight, -1

    def training_step(self, model, inputs, num_items_in_batch=None):
        n = inputs.pop("n_tokens", None)
        if n is not None:
            n = torch.as_tensor(n, dtype=torch.long, device=self.args.device)
            if self.accelerator.num_processes > 1:
                n = self.accelerator.reduce(n, reduction="sum")
            self.state.num_input_tokens_seen += int(n.item())
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Project only learned positions onto the vocabulary (ml.train.loss); single process only,
        # because calling the decoder directly bypasses the DDP/DeepSpeed wrappers' forward.
        fast = (
            not return_outputs
            and num_items_in_batch is not None
            and not self.is_deepspeed_enabled
            and self.accelerator.num_processes == 1
            and supports_learned_only_loss(model)
        )
        self.loss_is_scaled_for_ga = True if fast else None
        if not fast:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.accelerator.autocast():  # accelerate autocasts model.forward, which this bypasses
            loss = learned_only_loss(model, inputs, num_items_in_batch)
            step = self.state.global_step
            if self.retain is not None and self.retain_weight > 0 and model.training and step != self._retained_at:
                self._retained_at = step  # once per optimizer step, on its first micro-batch
                loss = loss + self.retain_weight * retain_loss(model, self.retain, step)
            return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("n_tokens", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def _training_args(cfg: SupervisedConfig, ckpt_dir: Path, has_valid: bool) -> TrainingArguments:
    extra: dict[str, Any] = {}
    if cfg.deepspeed is not None:
        extra["deepspeed"] = deepspeed_config(cfg.deepspeed)
    return training_args(
        TrainingArguments, cfg, ckpt_dir, has_valid,
        micro_batch_size=cfg.micro_batch_size,
        learning_rate=cfg.peak_learning_rate,
        checkpointing=cfg.gradient_checkpointing and cfg.adapter != "qlora",  # qlora: peft does it
        remove_unused_columns=False,
        include_num_input_tokens_seen="no",  # counted exactly by SupervisedTrainer
        **extra,
    )


def _load_split(
    tokenizer, path: Path | None, cfg: SupervisedConfig, name: str, sink: JobSink
) -> TokenizedSplit | None:
    if path is None:
        return None
    split = tokenize_file(tokenizer, path, cfg.max_seq_length)
    if is_main():
        sink.log(
            f"{name.capitalize()} file: {split.describe()}.",
            data={
                "examples": len(split),
                "tokens": split.n_tokens,
                "learned_tokens": split.n_learned,
                "truncated": split.n_truncated,
                "skipped": split.n_skipped,
            },
        )
    return split


def run_supervised(
    cfg: SupervisedConfig,
    base_model: Path,
    train_file: Path,
    valid_file: Path | None,
    output_dir: Path,
    sink: JobSink,
    resume: bool = True,
    callbacks: list[TrainerCallback] | None = None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune `base_model` on a canonical SFT file; returns where the result is and how it went.

    output_dir gets `checkpoints/checkpoint-N` (complete ones only, newest `keep_checkpoints` kept) and,
    on success, `model/` (adapter or full model + tokenizer + chat template + chatforge.json). With
    resume=True a run continues from the newest complete checkpoint in output_dir; resume=False starts
    over and deletes old checkpoints. A "pause" from the sink checkpoints and returns status "paused";
    "cancel" returns "cancelled" without saving. `callbacks` are extra TrainerCallbacks (tests, hooks).
    `cache_dir` keeps what depends only on the base model between runs (retain_base's replay set).
    """
    base_model, train_file, output_dir = Path(base_model), Path(train_file), Path(output_dir)
    if cfg.deepspeed is not None:
        ensure_single_process_env()
        # torch deprecation notices DeepSpeed triggers on every step; nothing the user can act on.
        warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).*")
    tokenizer = load_tokenizer(base_model)
    train = _load_split(tokenizer, train_file, cfg, "training", sink)
    if len(train) == 0:
        raise DataError("the training file has no example with anything to learn")
    valid = _load_split(tokenizer, Path(valid_file) if valid_file else None, cfg, "validation", sink)
    if valid is not None and len(valid) == 0:
        valid = None

    resolved = resolve_auto(cfg, len(train), train.n_tokens, world_size(), bf16_supported())
    # "auto" is resolved once, at the first start: a resume (maybe on another kind of host) reuses it.
    first = first_start_config(output_dir / CHECKPOINTS) if resume else None
    if first:
        chosen = {k: first[k] for k, v in cfg.to_dict().items() if v == "auto" and k in first}
        resolved = replace(resolved, **chosen)
    torch.manual_seed(resolved.seed)  # adapter initialisation is part of the run's identity
    identity = run_identity(base_model, resolved.to_dict())
    ckpt_dir, start_from = open_checkpoints(output_dir, resume, identity)

    model = load_trainable_model(
        base_model,
        resolved.adapter,
        resolved.lora,
        resolved.quant,
        resolved.gradient_checkpointing,
        bool(resolved.bf16),
    )
    log_model_ready(
        sink,
        f"Model ready: {resolved.adapter}",
        model,
        f"; learning rate {resolved.peak_learning_rate:.3g}, "
        f"batch size {resolved.batch_size} ({resolved.micro_batch_size} x {resolved.gradient_accumulation} "
        f"accumulation), {resolved.n_epochs} epochs, bf16 {'on' if resolved.bf16 else 'off'}",
        config=resolved.to_dict(),
    )

    retain = None
    if resolved.retain_base and not supports_learned_only_loss(model):
        if cfg.retain_base != "auto":
            raise DataError(f"retain_base is not supported for {type(model).__name__}; set it to 0")
        resolved = replace(resolved, retain_base=0.0)
    if resolved.retain_base:
        retain, cached = cached_retain_set(model, tokenizer, cache_dir)
        if is_main():
            how = ("read from the cache (prepared while the worker was idle, or by an earlier job on this base model)"
                   if cached else "recorded")
            sink.log(f"Base-model answers to {len(retain)} general prompts {how}; "
                     f"each step keeps the model close to them (retain_base {resolved.retain_base:g}).",
                     data={"retain_prompts": len(retain), "retain_cached": cached})

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PackedCollator(pad_id, resolved.max_seq_length) if resolved.packing else PaddedCollator(pad_id)
    callback = SinkCallback(sink, n_examples=len(train))
    trainer = SupervisedTrainer(
        model=model,
        args=_training_args(resolved, ckpt_dir, valid is not None),
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback, *(callbacks or [])],
        retain=retain,
        retain_weight=float(resolved.retain_base or 0.0),
    )
    run = fit(trainer, callback, start_from, identity)
    metrics = {k: v for k, v in run.metrics.items() if k in ("train_loss", "valid_loss")}
    if "valid_loss" in metrics:  # perplexity of the validation file's assistant tokens
        metrics["valid_perplexity"] = math.exp(min(metrics["valid_loss"], 50.0))
    result = TrainResult(
        status=run.status, model_dir=None, adapter=resolved.adapter, steps=run.steps,
        total_steps=run.total_steps, trained_tokens=run.trained_tokens, metrics=metrics,
        checkpoint=run.checkpoint, config=resolved, runtime=runtime_report(trainer),
    )
    if not run.succeeded:
        return result

    meta = result_metadata(
        "sft", base_model, resolved.adapter, run.steps, resolved.to_dict(),
        trained_tokens=run.trained_tokens, metrics=metrics,
    )
    barrier = trainer.accelerator.wait_for_everyone
    final = save_trained(output_dir / FINAL, tokenizer, meta, trainer.save_model, is_main(), barrier)
    if is_main():
        sink.log(
            f"Saved the trained {'adapter' if meta['is_adapter'] else 'model'}.",
            data={"path": str(final)},
        )
    return replace(result, model_dir=final)
