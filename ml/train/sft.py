"""Supervised fine-tuning recipe: canonical conversations in, a trained adapter or model folder out.

run_supervised renders the files with the chat template (loss only on learned assistant turns), builds
the model for the chosen adapter, and runs the Hugging Face Trainer with packed batches, atomic
checkpoints, resume from the newest complete checkpoint, and a JobSink for progress and cancel/pause.
It knows nothing about jobs, databases or HTTP; see ml.train.launch for a command-line entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from ml.config import ConfigError, SupervisedConfig, resolve_auto
from ml.events import JobSink
from ml.models import load_tokenizer
from ml.records import DataError
from ml.train.batches import PackedCollator, PaddedCollator, TokenizedSplit, tokenize_file
from ml.train.callbacks import SinkCallback, evaluate_final
from ml.train.checkpoints import (
    COMPLETE_MARKER,
    AtomicCheckpointMixin,
    clean_partial,
    complete_checkpoints,
    first_start_config,
    latest_checkpoint,
)
from ml.train.distributed import deepspeed_config, ensure_single_process_env, world_size
from ml.train.loss import learned_only_loss, supports_learned_only_loss
from ml.train.trainable import (
    bf16_supported,
    count_parameters,
    load_trainable_model,
    runtime_report,
    save_trained,
)

CHECKPOINTS = "checkpoints"
FINAL = "model"
Status = Literal["succeeded", "paused", "cancelled"]


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
    """transformers Trainer with atomic checkpoints and exact token counting from the collator's n_tokens."""

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
            return learned_only_loss(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("n_tokens", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _training_args(cfg: SupervisedConfig, ckpt_dir: Path, has_valid: bool) -> TrainingArguments:
    kwargs: dict[str, Any] = {}
    if cfg.deepspeed is not None:
        kwargs["deepspeed"] = deepspeed_config(cfg.deepspeed)
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        num_train_epochs=cfg.n_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.peak_learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of all steps in transformers 5
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bool(cfg.bf16),
        activation_checkpointing=cfg.gradient_checkpointing and cfg.adapter != "qlora",  # qlora: peft does it
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if has_valid else "no",
        eval_steps=cfg.eval_interval if has_valid else None,
        save_strategy="steps",
        save_steps=cfg.checkpoint_interval,
        save_total_limit=cfg.keep_checkpoints,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="no",  # counted exactly by SupervisedTrainer
        **kwargs,
    )


# Changing these between a checkpoint and its resume does not change what is being trained.
_RESUME_TOLERANT = {"eval_interval", "checkpoint_interval", "keep_checkpoints"}


def model_fingerprint(folder: Path) -> str:
    """Identifies a model folder wherever it is copied: its config and the names and sizes of its weights."""
    h = hashlib.sha256((Path(folder) / "config.json").read_bytes() if (Path(folder) / "config.json").exists() else b"")
    for w in sorted(Path(folder).glob("*.safetensors")):
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    return h.hexdigest()


def _check_same_run(checkpoint: Path, cfg: SupervisedConfig, base_model: Path) -> None:
    """Refuse to resume a checkpoint written for another base model or other hyperparameters."""
    info = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    # the same folder, or the same model at another path (another host's copy of it, fetched from a store)
    same_copy = info.get("base_model_fingerprint") == model_fingerprint(base_model)
    if info.get("base_model") not in (None, str(base_model)) and not same_copy:
        raise ValueError(
            f"{checkpoint} was trained from {info['base_model']}, not {base_model}; use resume=False"
        )
    saved = info.get("config") or {}
    now = cfg.to_dict()
    changed = sorted(k for k in now if k in saved and k not in _RESUME_TOLERANT and saved[k] != now[k])
    if changed:
        raise ConfigError(
            changed[0],
            f"{checkpoint} was written with different settings ({', '.join(changed)}); "
            "resume with the same configuration and data, or start over with resume=False",
        )


def _load_split(
    tokenizer, path: Path | None, cfg: SupervisedConfig, name: str, sink: JobSink
) -> TokenizedSplit | None:
    if path is None:
        return None
    split = tokenize_file(tokenizer, path, cfg.max_seq_length)
    if _is_main():
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
) -> TrainResult:
    """Fine-tune `base_model` on a canonical SFT file; returns where the result is and how it went.

    output_dir gets `checkpoints/checkpoint-N` (complete ones only, newest `keep_checkpoints` kept) and,
    on success, `model/` (adapter or full model + tokenizer + chat template + chatforge.json). With
    resume=True a run continues from the newest complete checkpoint in output_dir; resume=False starts
    over and deletes old checkpoints. A "pause" from the sink checkpoints and returns status "paused";
    "cancel" returns "cancelled" without saving. `callbacks` are extra TrainerCallbacks (tests, hooks).
    """
    base_model, train_file, output_dir = Path(base_model), Path(train_file), Path(output_dir)
    ckpt_dir = output_dir / CHECKPOINTS
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
    first = first_start_config(ckpt_dir) if resume else None
    if first:
        chosen = {k: first[k] for k, v in cfg.to_dict().items() if v == "auto" and k in first}
        resolved = replace(resolved, **chosen)
    torch.manual_seed(resolved.seed)  # adapter initialisation is part of the run's identity

    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        clean_partial(ckpt_dir)
        if not resume:
            for _, p in complete_checkpoints(ckpt_dir):
                shutil.rmtree(p)
    start_from = latest_checkpoint(ckpt_dir) if resume else None
    if start_from is not None:
        _check_same_run(start_from, resolved, base_model)

    model = load_trainable_model(
        base_model,
        resolved.adapter,
        resolved.lora,
        resolved.quant,
        resolved.gradient_checkpointing,
        bool(resolved.bf16),
    )
    trainable, total = count_parameters(model)
    if _is_main():
        sink.log(
            f"Model ready: {resolved.adapter}, {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%); learning rate {resolved.peak_learning_rate:.3g}, "
            f"batch size {resolved.batch_size} ({resolved.micro_batch_size} x {resolved.gradient_accumulation} "
            f"accumulation), {resolved.n_epochs} epochs, bf16 {'on' if resolved.bf16 else 'off'}.",
            data={"trainable_params": trainable, "total_params": total, "config": resolved.to_dict()},
        )

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
    )
    for noisy in (PrinterCallback, ProgressCallback):  # the sink reports progress; no stdout dicts
        trainer.remove_callback(noisy)
    trainer.checkpoint_info = {"base_model": str(base_model), "config": resolved.to_dict(),
                               "base_model_fingerprint": model_fingerprint(base_model)}
    trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)

    evaluate_final(trainer, callback)
    state = trainer.state
    metrics = {k: v for k, v in callback.last_metrics.items() if k in ("train_loss", "valid_loss")}
    if "valid_loss" in metrics:  # perplexity of the validation file's assistant tokens
        metrics["valid_perplexity"] = math.exp(min(metrics["valid_loss"], 50.0))
    common = {
        "adapter": resolved.adapter,
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "trained_tokens": int(state.num_input_tokens_seen),
        "metrics": metrics,
        "config": resolved,
        "runtime": runtime_report(trainer),
    }
    finished = state.global_step >= state.max_steps
    if callback.stopped == "cancel" or (callback.stopped == "pause" and not finished):
        status: Status = "paused" if callback.stopped == "pause" else "cancelled"
        return TrainResult(status=status, model_dir=None, checkpoint=latest_checkpoint(ckpt_dir), **common)

    final = output_dir / FINAL
    meta = {
        "base_model": str(base_model),
        "method": "sft",
        "adapter": resolved.adapter,
        "is_adapter": resolved.adapter != "full",
        "step": state.global_step,
        "trained_tokens": int(state.num_input_tokens_seen),
        "metrics": metrics,
        "config": resolved.to_dict(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_trained(
        final, tokenizer, meta, trainer.save_model, _is_main(), trainer.accelerator.wait_for_everyone
    )
    if _is_main():
        sink.log(
            f"Saved the trained {'adapter' if meta['is_adapter'] else 'model'} to {final}.",
            data={"path": str(final)},
        )
    return TrainResult(status="succeeded", model_dir=final, checkpoint=latest_checkpoint(ckpt_dir), **common)
