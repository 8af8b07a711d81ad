"""LoRA adapters for serving: read a PEFT folder into plain tensors, keep an LRU of loaded ones.

Owns adapter files and lifetimes: which LoRA variants can be served, checking an adapter fits the base,
folding the scaling into B, and the name -> folder registry with its bounded cache. How adapters are
applied to a mixed batch lives in lora_batch.py; the model math in decoder.py.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ml.serve.request import UnknownAdapter, UnsupportedAdapter

BASE = "__base__"
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# Config switches that change the LoRA math beyond B @ A * scaling: refuse rather than serve wrongly.
_UNSUPPORTED = (
    "use_dora",
    "modules_to_save",
    "lora_bias",
    "trainable_token_indices",
    "layer_replication",
    "use_qalora",
    "alora_invocation_tokens",
    "target_parameters",
)


@dataclass
class LoraAdapter:
    name: str
    path: Path
    base_model: str | None
    # (layer index, projection name e.g. "q_proj") -> float32 (A [in, r], B [r, out] * scaling)
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    fingerprint: tuple = ()
    """Identifies these weights (name, folder, weight file size and mtime): keys the prefix cache."""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """Which base model an adapter folder belongs to: chatforge.json's "base_model" (written by our
    trainer) if present, else adapter_config.json's base_model_name_or_path."""
    d = Path(adapter_dir)
    for fname, key in (("chatforge.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        f = d / fname
        if f.exists():
            value = json.loads(f.read_text()).get(key)
            if value:
                return str(value)
    return None


def read_lora_config(adapter_dir: str | Path) -> dict:
    """adapter_config.json, checked to be a plain LoRA the engine can batch (else UnsupportedAdapter)."""
    d = Path(adapter_dir)
    cfg_file = d / "adapter_config.json"
    if not cfg_file.exists():
        raise UnsupportedAdapter(f"{d}: not a PEFT adapter folder (no adapter_config.json)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"{d}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for opt in _UNSUPPORTED:
        if cfg.get(opt):
            raise UnsupportedAdapter(f"{d}: LoRA option {opt}={cfg[opt]!r} is not supported for serving")
    return cfg


def _weights_file(d: Path) -> Path:
    for fname in ("adapter_model.safetensors", "adapter_model.bin"):
        if (d / fname).exists():
            return d / fname
    raise UnsupportedAdapter(f"{d}: no adapter_model.safetensors or adapter_model.bin")


def _load_state_dict(f: Path) -> dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(f))
    return torch.load(str(f), map_location="cpu", weights_only=True)


def read_lora_adapter(
    name: str, path: str | Path, shapes: dict[str, tuple[int, int]], num_layers: int
) -> LoraAdapter:
    """Read a PEFT LoRA folder into float32 tensors. `shapes` maps projection name -> (in, out) of the base model, used to
    check the adapter really belongs to this architecture."""
    from peft.utils.other import get_pattern_key

    d = Path(path)
    cfg = read_lora_config(d)
    weights_file = _weights_file(d)
    stat = weights_file.stat()
    alpha_default = float(cfg.get("lora_alpha", 8))
    rslora = bool(cfg.get("use_rslora", False))
    alpha_pattern = cfg.get("alpha_pattern") or {}

    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _load_state_dict(weights_file).items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in shapes or int(m.group(1)) >= num_layers:
            raise UnsupportedAdapter(f"{d}: tensor {key!r} is not a LoRA weight of a known projection")
        halves.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor

    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, proj), ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise UnsupportedAdapter(f"{d}: layer {layer} {proj} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]  # peft: A [r, in], B [out, r]
        r = a.shape[0]
        fan_in, fan_out = shapes[proj]
        if a.shape != (r, fan_in) or b.shape != (fan_out, r):
            raise UnsupportedAdapter(
                f"{d}: {proj} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the base "
                f"({fan_in} -> {fan_out}); was it trained on another base model?"
            )
        section = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        module_key = f"model.layers.{layer}.{section}.{proj}"
        pat = get_pattern_key(list(alpha_pattern), module_key) if alpha_pattern else None
        alpha = float(alpha_pattern.get(pat, alpha_default)) if pat else alpha_default
        scaling = alpha / (math.sqrt(r) if rslora else r)
        a_t = a.to(torch.float32).t().contiguous()
        b_t = (b.to(torch.float32).t() * scaling).contiguous()
        weights[(layer, proj)] = (a_t, b_t)
    if not weights:
        raise UnsupportedAdapter(f"{d}: adapter has no LoRA weights")
    fingerprint = (name, str(d.resolve()), stat.st_size, stat.st_mtime_ns)
    return LoraAdapter(name, d, adapter_base_model(d), weights, fingerprint)


class AdapterRegistry:
    """name -> folder, with at most `capacity` adapters' weights in memory (least recently used go).

    Adapters in use by running sequences are pinned and never evicted. Thread-safe: registration runs
    on API threads, loading on the scheduler thread.
    """

    def __init__(self, capacity: int, loader) -> None:
        self.capacity = max(1, capacity)
        self._loader = loader  # (name, path) -> LoraAdapter
        self._paths: dict[str, Path] = {}
        self._loaded: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self.generation = 0  # bumped whenever a loaded adapter's weights go away

    def register(self, name: str, path: str | Path) -> None:
        if not name or name == BASE:
            raise ValueError(f"invalid adapter name {name!r}")
        p = Path(path)
        read_lora_config(p)
        with self._lock:
            if name in self._paths and self._paths[name] != p:
                self._drop(name)
            self._paths[name] = p

    def unregister(self, name: str) -> None:
        with self._lock:
            self._paths.pop(name, None)
            self._drop(name)

    def _drop(self, name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            self.generation += 1

    def known(self, name: str) -> bool:
        with self._lock:
            return name in self._paths

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._paths)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def acquire(self, name: str, pinned: set[str]) -> LoraAdapter | None:
        """The loaded adapter (loading it if needed), or None when the cache is full of pinned
        adapters. Raises UnknownAdapter if the name is not registered."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            path = self._paths.get(name)
            if path is None:
                raise UnknownAdapter(f"adapter {name!r} is not registered")
            while len(self._loaded) >= self.capacity:
                victim = next((n for n in self._loaded if n not in pinned), None)
                if victim is None:
                    return None
                self._drop(victim)
        adapter = self._loader(name, path)  # outside the lock: reading a file takes a while
        with self._lock:
            if self._paths.get(name) != path:  # unregistered or re-pointed meanwhile
                raise UnknownAdapter(f"adapter {name!r} was unregistered while loading")
            self._loaded[name] = adapter
            return adapter
