"""Which model architectures the serving engine can run: one list, used by the engine (decoder.py) and
by base-model registration (`chatforge models add`), so a model that cannot be served is refused when
it is added instead of at its first chat request.

Deliberately free of torch: it only reads config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

# Llama-family decoders the lean forward pass in decoder.py reproduces exactly (tests/ml/serve checks
# each against transformers generate).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def unsupported_reason(config: dict) -> str | None:
    """Why a model with this config.json cannot be served, or None if it can."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"model_type {model_type!r} is not supported by the serving engine "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return None


def folder_unsupported_reason(model_dir: str | Path) -> str | None:
    """unsupported_reason() for a Hugging Face model folder (its config.json)."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        return f"{cfg_file} cannot be read: {e}"
    return unsupported_reason(config)
