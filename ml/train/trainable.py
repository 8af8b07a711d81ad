"""The model a training job optimises: a fresh base model with a LoRA adapter, a quantised base with one
(QLoRA), or all weights (full), and writing the trained result as a standard folder.

Owns the adapter/quantisation choices and the output layout (PEFT adapter or safetensors model, plus the
tokenizer with its chat template and a chatforge.json). Reusable by the RL recipes (lora_config,
load_trainable_model, save_trained). It never caches models: every job gets a fresh object (a 4-bit
model once run in eval mode repacks its weights and trains wrongly afterwards).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ml.config import LoraSettings, QuantSettings
from ml.models import bf16_is_native, load_causal_lm
from ml.train.checkpoints import publish, write_metadata


def lora_config(lora: LoraSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    tm = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=tm if tm == "all-linear" else list(tm),
        bias="none",
        task_type=task_type,
    )


def quiet_bitsandbytes() -> None:
    """8-bit matmuls warn on every call that inputs are cast; thousands of lines of noise."""
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")


def rank_device_map() -> dict[str, int] | None:
    """Where a quantised model loads on a multi-GPU launch: each rank's own GPU (bitsandbytes places the
    weights at load time, before the Trainer could move them); None elsewhere."""
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return None


def load_trainable_model(
    base_model: str | Path,
    adapter: str,
    lora: LoraSettings | None = None,
    quant: QuantSettings | None = None,
    gradient_checkpointing: bool = False,
    bf16: bool = False,
):
    """A fresh model ready for a Trainer: PEFT-wrapped for "lora"/"qlora", plain for "full".

    Weights stay float32 (bf16 runs as autocast, so optimizer state keeps full precision); QLoRA
    computes in bf16 when bf16 is on. The model's config has use_cache off for training.
    """
    lora = lora or LoraSettings()
    if adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        quiet_bitsandbytes()
        bits = (quant or QuantSettings()).bits
        model = load_causal_lm(base_model, "bfloat16" if bf16 else "float32", quantization=f"{bits}bit",
                               device_map=rank_device_map())
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        keep_4bit_weights_trainable(model)
    elif adapter in ("lora", "full"):
        model = load_causal_lm(base_model, "float32")
    else:
        raise ValueError(f"unknown adapter {adapter!r}")
    model.config.use_cache = False
    if adapter == "full":
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))


def keep_4bit_weights_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during a validation pass.

    On CPUs with AVX512-bf16, a Linear4bit run in eval mode without gradients (Trainer.evaluate)
    converts its weights to a CPU inference layout and keeps them so; training the same object
    afterwards computes wrong LoRA gradients without an error. Training models never take that path.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def quantized_layers(model) -> dict[str, int]:
    """How many bitsandbytes layers (Linear4bit, Linear8bitLt) the model really holds, by class name."""
    counts: dict[str, int] = {}
    try:
        import bitsandbytes as bnb
    except ImportError:
        return counts
    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            name = type(module).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts


def runtime_report(trainer) -> dict[str, Any]:
    """What a finished Trainer really ran: its engine ("deepspeed" only when the model was wrapped in a
    DeepSpeedEngine, with its ZeRO stage) and the quantised layers of the trained model."""
    wrapped = getattr(trainer, "model_wrapped", None)
    report: dict[str, Any] = {"engine": "torch"}
    if type(wrapped).__name__ == "DeepSpeedEngine":
        report["engine"] = "deepspeed"
        report["zero_stage"] = int(wrapped.zero_optimization_stage())
        report["zero_offload_optimizer"] = bool(wrapped.zero_use_cpu_optimizer())
    report["quantized_layers"] = quantized_layers(trainer.model)
    return report


def save_trained(
    out_dir: str | Path,
    tokenizer,
    metadata: dict[str, Any],
    write_weights: Callable[[str], None],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a trained result atomically: weights, tokenizer + chat template, chatforge.json, then rename.

    write_weights(folder) writes the weights: `model.save_pretrained` (a PEFT model writes only its
    adapter) or `trainer.save_model`, which every rank must call under DeepSpeed ZeRO-3 to gather the
    shards. A LoRA folder loads with plain transformers + peft:
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir).
    """
    final = Path(out_dir)
    staging = final.with_name(f".tmp-{final.name}")
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
    barrier()
    write_weights(str(staging))
    if is_main:
        tokenizer.save_pretrained(str(staging))
        if getattr(tokenizer, "chat_template", None) and not (staging / "chat_template.jinja").exists():
            (staging / "chat_template.jinja").write_text(tokenizer.chat_template)
        (staging / "training_args.bin").unlink(missing_ok=True)
        write_metadata(staging, metadata)
        publish(staging, final, {"step": metadata.get("step")})
    barrier()
    return final


def bf16_supported() -> bool:
    """True where bfloat16 autocast is fast: CUDA compute capability >= 8, or a CPU with AVX-512 BF16/AMX
    (ml.models.bf16_is_native). CHATFORGE_BF16_SUPPORTED=0/1 overrides the detection."""
    return bf16_is_native("cuda" if torch.cuda.is_available() else "cpu")
