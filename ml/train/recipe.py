"""The shape every training method shares; a method's recipe declares only what is particular to it.

A recipe (ml.train.sft, ml.rl.reward, ml.rl.dpo, ml.rl.online, ml.rl.ppo) goes: resolve its config ->
`open_checkpoints` (clean, find the newest complete one, refuse one written for another run) -> load its
model(s) and `log_model_ready` -> `training_args` -> its callback -> `fit` (train with resume, final
evaluation, how it stopped) -> on success `result_metadata` + ml.train.trainable.save_trained -> its
result. This module owns those shared steps and the output layout: output_dir/checkpoints/checkpoint-N
while training, output_dir/model once it succeeded. It knows nothing about jobs, data formats or trl.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from ml.config import ConfigError
from ml.events import JobSink
from ml.train.callbacks import SinkCallback, evaluate_final
from ml.train.checkpoints import COMPLETE_MARKER, clean_partial, complete_checkpoints, latest_checkpoint
from ml.train.trainable import count_parameters

CHECKPOINTS = "checkpoints"
FINAL = "model"
Status = Literal["succeeded", "paused", "cancelled"]

# Changing these between a checkpoint and its resume does not change what is being trained.
RESUME_TOLERANT = frozenset({"eval_interval", "checkpoint_interval", "keep_checkpoints"})


def is_main() -> bool:
    """True on the process that writes files and talks to the sink (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def model_fingerprint(folder: Path) -> str:
    """Identifies a model folder wherever it is copied: its config and the names and sizes of its weights."""
    config = Path(folder) / "config.json"
    h = hashlib.sha256(config.read_bytes() if config.exists() else b"")
    for w in sorted(Path(folder).glob("*.safetensors")):
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    return h.hexdigest()


def run_identity(base_model: Path, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a checkpoint records about its run (written into its completion marker), checked on resume."""
    return {"base_model": str(base_model), "config": config,
            "base_model_fingerprint": model_fingerprint(base_model), **extra}


def check_same_run(checkpoint: Path, config: dict[str, Any], base_model: Path) -> None:
    """Refuse to resume a checkpoint written for another base model or other hyperparameters."""
    info = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    # the same folder, or the same model at another path (another host's copy of it, fetched from a store)
    same_copy = info.get("base_model_fingerprint") == model_fingerprint(base_model)
    if info.get("base_model") not in (None, str(base_model)) and not same_copy:
        raise ValueError(
            f"{checkpoint} was trained from {info['base_model']}, not {base_model}; use resume=False"
        )
    saved = info.get("config") or {}
    changed = sorted(k for k in config if k in saved and k not in RESUME_TOLERANT and saved[k] != config[k])
    if changed:
        raise ConfigError(
            changed[0],
            f"{checkpoint} was written with different settings ({', '.join(changed)}); "
            "resume with the same configuration and data, or start over with resume=False",
        )


def open_checkpoints(
    output_dir: Path, resume: bool, identity: dict[str, Any] | None = None
) -> tuple[Path, Path | None]:
    """(checkpoint folder, checkpoint to resume from or None). Leftovers of interrupted saves are deleted;
    resume=False deletes the old checkpoints too. With `identity` (run_identity) a checkpoint of another
    run is refused."""
    ckpt_dir = Path(output_dir) / CHECKPOINTS
    if is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        clean_partial(ckpt_dir)
        if not resume:
            for _, p in complete_checkpoints(ckpt_dir):
                shutil.rmtree(p)
    start_from = latest_checkpoint(ckpt_dir) if resume else None
    if start_from is not None and identity is not None:
        check_same_run(start_from, identity["config"], Path(identity["base_model"]))
    return ckpt_dir, start_from


def log_model_ready(sink: JobSink, what: str, model, detail: str = "", **data: Any) -> None:
    """The "<what>: N of M parameters trainable" event, then what the recipe adds (`detail`, `data`)."""
    trainable, total = count_parameters(model)
    share = 100 * trainable / total
    if is_main():
        sink.log(
            f"{what}: {trainable:,} of {total:,} parameters trainable ({share:.2f}%){detail}.",
            data={"trainable_params": trainable, "total_params": total, **data},
        )


class TrainerSettings(Protocol):
    """The config fields every Trainer-based recipe maps the same way (SFT's and the RL trainer configs)."""

    gradient_accumulation: Any
    n_epochs: Any
    max_steps: int | None
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    bf16: Any
    eval_interval: Any
    checkpoint_interval: Any
    keep_checkpoints: int
    seed: int


def training_args(
    args_cls: type,
    cfg: TrainerSettings,
    ckpt_dir: Path,
    has_valid: bool,
    *,
    micro_batch_size: int,
    learning_rate: float,
    checkpointing: bool,
    **method_fields: Any,
):
    """A TrainingArguments (or trl config) of class `args_cls` for `cfg`, checkpointing into `ckpt_dir`.

    Sets batch split, schedule, precision (trl turns bf16 and checkpointing on by default; both are set
    explicitly), eval/checkpoint cadence (eval each epoch when cfg.eval_interval is None), seeds, no
    reporting to external services, CPU when there is no GPU. `method_fields` are passed through."""
    eval_every = "steps" if cfg.eval_interval else "epoch"
    return args_cls(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=micro_batch_size,
        per_device_eval_batch_size=micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        num_train_epochs=cfg.n_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of all steps in transformers 5
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bool(cfg.bf16),
        fp16=False,
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
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


@dataclass(frozen=True)
class Outcome:
    """How a training loop ended: what every recipe's result is built from."""

    status: Status
    steps: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    # Newest complete checkpoint (what a paused run resumes from).
    checkpoint: Path | None = None
    trained_tokens: int = 0

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


def stop_status(stopped: str | None, step: int, total_steps: int) -> Status:
    """A cancel, or a pause before the last step, stops the run; a pause at the last step finishes it."""
    if stopped == "cancel":
        return "cancelled"
    return "paused" if stopped == "pause" and step < total_steps else "succeeded"


def quiet_console(trainer) -> None:
    """Drop the Trainer's console printer/progress bar: everything goes to the sink instead."""
    from transformers import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)


def fit(trainer, callback: SinkCallback, start_from: Path | None, identity: dict[str, Any]) -> Outcome:
    """Train `trainer` (an AtomicCheckpointMixin Trainer reporting through `callback`) from `start_from`,
    evaluate the result once more unless its last step was just evaluated, and say how it ended."""
    quiet_console(trainer)
    if callback.sink.control() == "cancel":  # cancelled while the run was being set up: take no step
        callback.stopped = "cancel"
        step, last = (complete_checkpoints(trainer.args.output_dir) or [(0, None)])[-1]
        return Outcome(status="cancelled", steps=step, total_steps=step, checkpoint=last)
    trainer.checkpoint_info = identity
    trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)
    evaluate_final(trainer, callback)
    state = trainer.state
    return Outcome(
        status=stop_status(callback.stopped, state.global_step, state.max_steps),
        steps=state.global_step,
        total_steps=state.max_steps,
        metrics=dict(callback.last_metrics),
        checkpoint=latest_checkpoint(trainer.args.output_dir),
        trained_tokens=int(state.num_input_tokens_seen),
    )


def result_metadata(
    method: str, base_model: Path, adapter: str, step: int, config: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """chatforge.json of a trained folder: what it was trained from, by which method and settings."""
    return {
        "base_model": str(base_model),
        "method": method,
        "adapter": adapter,
        "is_adapter": adapter != "full",
        "step": step,
        "config": config,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
