"""A trained reward model as a scorer: load the saved folder, turn conversations into scalar rewards.

Owns the reward-model folder format and scoring. A reward-model folder is a complete (LoRA merged)
1-label sequence-classification model in safetensors with its tokenizer, chat template and a
chatforge.json ({"kind": "reward_model", ...}); it does not depend on the base folder staying put.
Training lives in ml.rl.reward; the API's POST /v1/rewards and PPO/RLOO/GRPO call score().
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ml.data.render import render_preference
from ml.records import Message, PreferenceExample

REWARD_MODEL_KIND = "reward_model"
DEFAULT_MAX_LENGTH = 1024


def _as_message(m: Message | dict[str, Any]) -> Message:
    return m if isinstance(m, Message) else Message.from_dict(m)


def reward_input_ids(
    tokenizer, messages: Sequence[Message | dict[str, Any]], max_length: int | None = None
) -> list[int]:
    """Token ids the reward model reads for a conversation ending with the assistant reply to judge.

    Exactly the ids training used for a chosen/rejected reply (render_preference: prompt with the
    generation prompt, then the reply and its end-of-turn token); too-long prompts lose their start.
    """
    msgs = [_as_message(m) for m in messages]
    if not msgs or msgs[-1].role != "assistant":
        raise ValueError("a conversation to score must end with an assistant message")
    reply = msgs[-1]
    prompt_ids, reply_ids, _ = render_preference(
        tokenizer, PreferenceExample(prompt=tuple(msgs[:-1]), chosen=reply, rejected=reply), max_length
    )
    return prompt_ids + reply_ids


def load_reward_model(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a reward-model folder written by run_reward_model; model in eval mode."""
    from transformers import AutoModelForSequenceClassification

    from ml.models import TORCH_DTYPES, load_tokenizer

    path = Path(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=TORCH_DTYPES.get(dtype, torch.float32), trust_remote_code=False, use_safetensors=True
    )
    if model.config.num_labels != 1:
        raise ValueError(f"{path} is not a reward model (num_labels={model.config.num_labels})")
    tokenizer = load_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


@torch.no_grad()
def score_ids(model, pad_token_id: int, rows: Sequence[Sequence[int]], batch_size: int = 8) -> list[float]:
    """Rewards for already tokenised rows (right-padded in batches of similar length)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = [0.0] * len(rows)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(rows[i])] = torch.tensor(list(rows[i]), dtype=torch.long)
            mask[j, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for j, i in enumerate(idx):
            out[i] = float(logits[j, 0])
    return out


def score(
    model,
    tokenizer,
    conversations: Sequence[Sequence[Message | dict[str, Any]]],
    batch_size: int = 8,
    max_length: int | None = DEFAULT_MAX_LENGTH,
) -> list[float]:
    """One scalar reward per conversation (each ends with the assistant reply being judged).

    Higher is better; only differences between replies to the same prompt are meaningful.
    """
    was_training = model.training
    model.eval()
    try:
        rows = [reward_input_ids(tokenizer, conv, max_length) for conv in conversations]
        return score_ids(model, tokenizer.pad_token_id, rows, batch_size)
    finally:
        model.train(was_training)
