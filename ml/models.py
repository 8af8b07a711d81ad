"""Loading base models and tokenizers, and converting a GGUF file into a safetensors model folder.

Owns how weights become a torch module: dtype, optional bitsandbytes 8/4-bit quantisation, and the
one-time GGUF conversion. Models are only read from safetensors and never with trust_remote_code.
Where the weights come from (a wheel, a hub, a registry row) is the caller's business.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Quantization = Literal["none", "8bit", "4bit"]

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bf16_is_native(device: str = "cpu") -> bool:
    """Whether bfloat16 matmuls run in hardware here: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (AVX2-only CPUs) bf16 is emulated and slower than float32: measured on a 2-core AVX2 EPYC,
    the serving engine decoded 8 streams 2.6x faster in float32 (docs/benchmarks.md).
    CHATFORGE_BF16_SUPPORTED=0/1 overrides the detection (a host whose bf16 is slow in practice)."""
    override = os.environ.get("CHATFORGE_BF16_SUPPORTED", "").strip()
    if override in ("0", "1"):
        return override == "1"
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older or newer torch without these probes: ask the kernel
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(dtype: Dtype, device: str = "cpu") -> str:
    """"auto" -> "bfloat16" where bf16 is native on `device`, else "float32"; other names unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_native(device) else "float32"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quantization: Quantization, compute_dtype: torch.dtype = torch.float32):
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    raise ValueError(f"unknown quantization {quantization!r}; expected none, 8bit or 4bit")


def load_causal_lm(
    path: str | Path,
    dtype: Dtype = "float32",
    quantization: Quantization = "none",
    device_map: str | dict[str, int] | None = None,
):
    """Load a causal LM from a local safetensors folder. Always a fresh object (never cached)."""
    from transformers import AutoModelForCausalLM

    on = device_map if isinstance(device_map, str) else "cuda" if device_map else "cpu"
    torch_dtype = TORCH_DTYPES.get(resolve_dtype(dtype, on), torch.float32)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": False, "use_safetensors": True}
    qc = quantization_config(quantization, torch_dtype)
    if qc is not None:
        kwargs["quantization_config"] = qc
    if device_map:
        kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Dequantise a GGUF file into a safetensors model folder with tokenizer and chat template.

    Writes into a temporary sibling folder and renames it into place, so a crash never leaves a
    half-written model that later looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = progress or (lambda s: None)
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        say("reading tokenizer from GGUF")
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        say("dequantising weights from GGUF (this takes a few seconds)")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        say("writing safetensors")
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"model ready at {out_dir}")
    return out_dir
