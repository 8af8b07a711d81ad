"""Causal-LM loss that projects only the learned positions onto the vocabulary.

In chat SFT most prompt tokens are context: their logits are never used, yet the output projection
(576 x 49152 for SmolLM2, a fifth of its FLOPs) and the float32 log-softmax cost the same for them.
This runs the decoder, keeps the hidden states whose next token is learned, and projects only those.
Only for model families whose logits are exactly lm_head(hidden) (a whitelist); otherwise returns None
and the caller uses the model's own loss. It does not handle DeepSpeed engines (the caller checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.data.render import IGNORE_INDEX

# Families whose CausalLM forward is logits = lm_head(decoder(...)), no scaling or soft-capping.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3", "gemma"}
)


def causal_lm(model):
    get_base = getattr(model, "get_base_model", None)  # peft wrapper -> the transformers model
    return get_base() if callable(get_base) else model


def supports_learned_only_loss(model) -> bool:
    lm = causal_lm(model)
    cfg = getattr(lm, "config", None)
    return (
        getattr(cfg, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
        and callable(getattr(lm, "get_decoder", None))
        and lm.get_output_embeddings() is not None
    )


def learned_only_loss(
    model, inputs: dict, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Sum of next-token cross-entropy over learned positions, divided by num_items_in_batch (the learned
    tokens of the whole accumulated batch) or, without it, by this micro-batch's learned tokens."""
    lm = causal_lm(model)
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = lm.get_decoder()(**model_inputs, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), target[keep], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(loss.device)
    return loss / denom
