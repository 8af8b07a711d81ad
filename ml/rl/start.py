"""Where an RLHF run starts from, and how its trained LoRA is written back relative to the real base.

Owns: telling a full model folder from a LoRA adapter folder (an SFT output), loading either as a plain
causal LM or a 1-label sequence classifier with the SFT adapter merged in, and writing a policy adapter
trained on that merged model as ONE standard PEFT adapter over the original base (the SFT and RL
adapters are concatenated along the rank: exact, not an approximation). It does not train anything.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ml.models import TORCH_DTYPES, load_causal_lm, load_tokenizer

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class StartPoint:
    """A model to start from: a full folder, or a base folder plus an SFT adapter to merge first."""

    base: Path
    adapter: Path | None = None

    @property
    def tokenizer_dir(self) -> Path:
        # An SFT output carries its tokenizer and chat template next to the adapter; prefer those.
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").exists():
            return self.adapter
        return self.base


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def resolve_start(path: str | Path, base_model: str | Path | None = None) -> StartPoint:
    """A StartPoint for `path`: a full model folder, or an adapter folder whose base is read from its
    adapter_config.json (or given as `base_model` when the folder moved since it was trained)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not is_adapter_dir(path):
        return StartPoint(base=path)
    if base_model is None:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
        base_model = cfg.get("base_model_name_or_path")
        if not base_model:
            raise ValueError(f"{path} is a LoRA adapter without base_model_name_or_path; pass base_model")
    base = Path(base_model)
    if not base.is_dir():
        raise FileNotFoundError(f"base model of adapter {path} not found: {base}")
    return StartPoint(base=base, adapter=path)


def load_start_tokenizer(start: StartPoint):
    return load_tokenizer(start.tokenizer_dir)


def load_start_causal_lm(start: StartPoint, dtype: str = "float32"):
    """The starting causal LM; an SFT adapter is merged into the base weights (a plain module back)."""
    model = load_causal_lm(start.base, dtype=dtype)
    if start.adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start.adapter)).merge_and_unload()


def load_start_sequence_classifier(start: StartPoint, dtype: str = "float32"):
    """A 1-label sequence classifier (reward model) whose backbone is the starting model.

    The score head is freshly initialised. For an adapter start the merged causal LM's backbone weights
    are copied into a classifier built from the same config, so nothing is written to disk.
    """
    from transformers import AutoModelForSequenceClassification

    torch_dtype = TORCH_DTYPES.get(dtype, torch.float32)
    if start.adapter is None:
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        with suppress_seqcls_warning():
            return AutoModelForSequenceClassification.from_pretrained(
                str(start.base),
                num_labels=1,
                dtype=torch_dtype,
                trust_remote_code=False,
                use_safetensors=True,
            )
    lm = load_start_causal_lm(start, dtype)
    config = lm.config
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config, dtype=torch_dtype)
    missing, unexpected = rm.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(
            f"backbone mismatch copying {start.adapter}: missing={missing} unexpected={unexpected}"
        )
    return rm


def write_policy_adapter(policy, start: StartPoint, folder: str | Path) -> None:
    """Write the trained LoRA of `policy` (a PeftModel over the starting model) into `folder`.

    From a full model: the adapter as is. From an SFT adapter: the policy adapter was trained on the
    merged model W + s1*B1*A1, so what is written is the rank concatenation of both adapters (peft's
    "cat" combination), which reproduces W + s1*B1*A1 + s2*B2*A2 exactly over the original base; its
    adapter_config names that base. Use with ml.train.trainable.save_trained for an atomic result folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if start.adapter is None:
        policy.save_pretrained(str(folder))
    else:
        _save_stacked(policy, start, folder)
    _set_base(folder, start.base)


def policy_writer(policy, start: StartPoint, adapter: str) -> Callable[[str], None]:
    """write_weights for save_trained: the policy adapter over the original base ("lora"), or the model."""
    if adapter == "lora":
        return lambda folder: write_policy_adapter(policy, start, folder)
    return lambda folder: policy.save_pretrained(folder)


def _set_base(adapter_dir: Path, base: Path) -> None:
    cfg_path = adapter_dir / ADAPTER_CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _save_stacked(policy, start: StartPoint, out: Path) -> None:
    with tempfile.TemporaryDirectory() as rl_dir:
        policy.save_pretrained(rl_dir)
        fold_adapter(rl_dir, start, out)


def fold_adapter(adapter_dir: str | Path, start: StartPoint, out: str | Path) -> None:
    """Write `adapter_dir` (a LoRA trained on the merged SFT model of `start`) into `out` as one adapter
    over the original base: the rank concatenation of the SFT and the trained adapter (peft's "cat").

    Used for the final result (through write_policy_adapter) and for every checkpoint, whose raw
    adapter stays as the trainer wrote it so that resume is unchanged. `out` names start.base.
    """
    from peft import PeftModel

    if start.adapter is None:
        raise ValueError("fold_adapter needs a start with an SFT adapter")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_causal_lm(start.base, dtype="float32")
    model = PeftModel.from_pretrained(base, str(start.adapter), adapter_name="sft")
    model.load_adapter(str(adapter_dir), adapter_name="rl")
    model.add_weighted_adapter(["sft", "rl"], [1.0, 1.0], adapter_name="stacked", combination_type="cat")
    model.set_adapter("stacked")
    model.delete_adapter("sft")
    model.delete_adapter("rl")
    # save_pretrained writes a non-default adapter into a sub-folder named after it; flatten it.
    model.save_pretrained(str(out), selected_adapters=["stacked"])
    sub = out / "stacked"
    if sub.is_dir():
        for f in sub.iterdir():
            f.replace(out / f.name)
        sub.rmdir()
    _set_base(out, start.base)


def materialize(start: StartPoint, folder: str | Path) -> StartPoint:
    """A full-model StartPoint: `start` as is, or its merged SFT model written once into `folder`.

    Needed where a library re-loads the starting model by path (trl's full fine-tuning reference).
    """
    if start.adapter is None:
        return start
    folder = Path(folder)
    if not (folder / "config.json").exists():
        from ml.train.checkpoints import atomic_dir

        with atomic_dir(folder) as tmp:
            load_start_causal_lm(start).save_pretrained(str(tmp))
            load_start_tokenizer(start).save_pretrained(str(tmp))
    return StartPoint(base=folder)
