"""SinkCallback: a transformers TrainerCallback that reports to a JobSink and obeys its cancel/pause.

Works with any Trainer (transformers or trl): per-step metrics, human-readable events, checkpoint
reports once a checkpoint is fully on disk, and a control poll after every optimizer step. It does not
save anything itself: on "pause" it asks the trainer to checkpoint, then stop. Only the main process
talks to the sink; a stop decision is broadcast so every rank leaves the loop at the same step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ml.events import Control, JobSink
from ml.train.checkpoints import checkpoint_dir

_CODES = {None: 0, "cancel": 1, "pause": 2}
_NAMES = {v: k for k, v in _CODES.items()}


def _agree(decision: Control) -> Control:
    """Rank 0's decision, broadcast to every rank (no-op in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return decision
    if torch.distributed.get_world_size() == 1:
        return decision
    t = torch.tensor([_CODES[decision]], dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.broadcast(t, src=0)
    return _NAMES[int(t.item())]


class SinkCallback(TrainerCallback):
    """Bridges a Trainer to a JobSink.

    n_examples: shown in the "training started" event. save_at_end: make sure the last step is
    checkpointed (the Trainer only saves on multiples of save_steps). After train() returns,
    `stopped` is None, "cancel" or "pause".
    """

    def __init__(self, sink: JobSink, n_examples: int | None = None, save_at_end: bool = True) -> None:
        self.sink = sink
        self.n_examples = n_examples
        self.save_at_end = save_at_end
        self.stopped: Control = None
        self.last_metrics: dict[str, float] = {}
        self._pending: tuple[int, dict[str, float]] | None = None
        self._step_started = time.monotonic()
        self._tokens_at_step_start = 0
        self._tokens_per_second: float | None = None
        self._epoch_reported = -1
        self.last_eval_step: int | None = None

    # -- helpers ---------------------------------------------------------------------------------
    def _main(self, state: TrainerState) -> bool:
        return state.is_world_process_zero

    def _log(self, state: TrainerState, message: str, data: dict | None = None) -> None:
        if self._main(state):
            self.sink.log(message, data=data)

    def _emit(self, state: TrainerState, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        self.last_metrics.update(values)
        if self._main(state):
            self.sink.metrics(step, values, state.max_steps or None)

    # -- lifecycle -------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        self._tokens_at_step_start = state.num_input_tokens_seen
        what = f"{self.n_examples} examples, " if self.n_examples is not None else ""
        if state.global_step > 0:
            self._log(
                state,
                f"Training resumed at step {state.global_step} of {state.max_steps} (epoch {state.epoch:.2f}).",
                {"step": state.global_step, "total_steps": state.max_steps},
            )
        else:
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            self._log(
                state,
                f"Training started: {what}{state.max_steps} steps over {state.num_train_epochs} epochs, "
                f"batch size {batch}, learning rate {args.learning_rate:.3g}.",
                {"n_examples": self.n_examples, "total_steps": state.max_steps, "batch_size": batch},
            )

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        if state.epoch and state.epoch % 1 > 1e-6:
            return  # resuming mid-epoch: the "resumed" event already said where
        epoch = int(state.epoch or 0) + 1
        if epoch != self._epoch_reported and epoch <= state.num_train_epochs:
            self._epoch_reported = epoch
            self._log(state, f"Epoch {epoch} of {state.num_train_epochs} started.", {"epoch": epoch})

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        self._step_started = time.monotonic()
        self._tokens_at_step_start = state.num_input_tokens_seen

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        elapsed = time.monotonic() - self._step_started
        tokens = state.num_input_tokens_seen - self._tokens_at_step_start
        self._tokens_per_second = tokens / elapsed if tokens > 0 and elapsed > 0 else None
        decision = _agree(self.sink.control() if self._main(state) else None)
        if decision is not None:
            self.stopped = decision
            control.should_training_stop = True
            if decision == "pause":
                control.should_save = True
                self._log(
                    state, f"Pause requested: saving a checkpoint at step {state.global_step}, then stopping."
                )
            else:
                self._log(state, f"Cancel requested: stopping at step {state.global_step}.")
                control.should_save = False
                control.should_evaluate = False
        elif self.save_at_end and state.global_step >= state.max_steps:
            control.should_save = True
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs:  # evaluation or end-of-training summaries are handled elsewhere
            return
        values = {
            "train_loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "epoch": state.epoch,
        }
        if logs.get("grad_norm") is not None:
            values["grad_norm"] = logs["grad_norm"]
        if self._tokens_per_second is not None:
            values["tokens_per_second"] = self._tokens_per_second
        if state.num_input_tokens_seen:
            values["trained_tokens"] = state.num_input_tokens_seen
        if control.should_evaluate:
            self._pending = (state.global_step, values)  # emitted with valid_loss in on_evaluate
        else:
            self._emit(state, state.global_step, values)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kw
    ):
        metrics = metrics or {}
        self.last_eval_step = state.global_step
        step, values = self._pending or (state.global_step, {})
        self._pending = None
        if "eval_loss" in metrics:
            values = {**values, "valid_loss": metrics["eval_loss"]}
            self._log(
                state,
                f"Step {state.global_step}: validation loss {metrics['eval_loss']:.4f}.",
                {"step": state.global_step, "valid_loss": metrics["eval_loss"]},
            )
        if values:
            self._emit(state, step, values)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        path = checkpoint_dir(args.output_dir, state.global_step)
        if self._main(state) and Path(path).is_dir():
            self.sink.checkpoint(state.global_step, path, dict(self.last_metrics))
            self._log(
                state,
                f"Checkpoint saved at step {state.global_step} of {state.max_steps}.",
                {"step": state.global_step, "path": str(path)},
            )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        loss = self.last_metrics.get("train_loss")
        loss_s = f", last train loss {loss:.4f}" if loss is not None else ""
        if self.stopped == "pause":
            self._log(state, f"Training paused at step {state.global_step} of {state.max_steps}{loss_s}.")
        elif self.stopped == "cancel":
            self._log(state, f"Training cancelled at step {state.global_step} of {state.max_steps}{loss_s}.")
        else:
            self._log(state, f"Training finished: {state.global_step} steps{loss_s}.")


def evaluate_final(trainer, callback: SinkCallback) -> None:
    """Validation metrics of the model as trained: one more evaluation at the last step, unless that step
    was just evaluated (or there is no validation set, or the run was stopped early)."""
    if trainer.eval_dataset is None or callback.stopped is not None:
        return
    if callback.last_eval_step == trainer.state.global_step:
        return
    trainer.evaluate()
