"""The servable form of a training checkpoint: the weights a checkpoint's model id must serve.

A trainer checkpoint is written for resuming, not serving: an RL policy started from an SFT adapter
holds a LoRA relative to the MERGED SFT model, and a LoRA reward model holds an adapter plus its score
head. export_checkpoint leaves the checkpoint untouched (resume reads it as the trainer wrote it) and,
where needed, writes a `servable/` folder inside it, folded the way the final result is. It does not
decide when checkpoints are taken or where they are registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ml.train.checkpoints import atomic_dir

SERVABLE = "servable"
Kind = Literal["adapter", "full", "reward_model"]


@dataclass(frozen=True)
class Servable:
    """Where a checkpoint's servable weights are and what they are."""

    folder: Path
    kind: Kind  # "adapter": a PEFT LoRA over the original base; "full": a causal LM; "reward_model"

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"


def _has_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists()


def export_checkpoint(checkpoint: str | Path, start: str | Path, method: str) -> Servable:
    """The servable form of `checkpoint`, written into `checkpoint/servable` when it differs from it.

    `start` is the folder the job started from (a full model, or an SFT LoRA output); `method` is the
    job's method ("supervised", "reward_model", "dpo", "ppo", "rloo" or "grpo"). Idempotent: a finished export is reused.
    """
    from ml.rl.start import fold_adapter, load_start_tokenizer, resolve_start

    checkpoint = Path(checkpoint)
    out = checkpoint / SERVABLE
    point = resolve_start(start)
    if method == "reward_model":
        if not _has_adapter(checkpoint):
            return Servable(checkpoint, "reward_model")  # every weight trained: already a full classifier
        if not (out / "config.json").exists():
            with atomic_dir(out) as tmp:
                _merge_reward_adapter(checkpoint, point, tmp)
                load_start_tokenizer(point).save_pretrained(str(tmp))
        return Servable(out, "reward_model")
    if not _has_adapter(checkpoint):
        return Servable(checkpoint, "full")
    if method == "supervised" or point.adapter is None:
        return Servable(checkpoint, "adapter")  # already relative to the original base
    if not (out / "adapter_config.json").exists():
        with atomic_dir(out) as tmp:
            fold_adapter(checkpoint, point, tmp)
            load_start_tokenizer(point).save_pretrained(str(tmp))
    return Servable(out, "adapter")


def _merge_reward_adapter(checkpoint: Path, point, folder: Path) -> None:
    """A LoRA reward model (adapter + trained score head in modules_to_save) merged into a full classifier."""
    from peft import PeftModel

    from ml.rl.start import load_start_sequence_classifier

    model = load_start_sequence_classifier(point)
    merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    merged.save_pretrained(str(folder))
