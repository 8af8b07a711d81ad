"""Prompts for online RL (PPO, RLOO, GRPO), read from any canonical file kind.

Owns turning a canonical JSONL file into a list of prompt conversations: a "prompts" file as is, a
"preference" file's prompts (so the pipeline SFT -> RM -> PPO can reuse the RM's data), or an "sft"
file cut before its last assistant turn. Format conversion from user uploads is ml.data's job.
"""

from __future__ import annotations

import json
from pathlib import Path

from ml.records import DataError, Message, PreferenceExample, PromptExample, record_from_dict

Prompt = tuple[Message, ...]


def _kind_of(d: dict) -> str:
    if "chosen" in d and "rejected" in d:
        return "preference"
    if "messages" in d:
        return "sft"
    if "prompt" in d:
        return "prompts"
    raise DataError(f"not a canonical record: keys {sorted(d)}")


def _prompt_of(record) -> Prompt | None:
    if isinstance(record, (PromptExample, PreferenceExample)):
        return tuple(record.prompt)
    msgs = tuple(record.messages)
    last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=None)
    prompt = msgs if last is None else msgs[:last]
    return prompt or None


def read_prompts(path: str | Path) -> list[Prompt]:
    """Every usable prompt in a canonical file (kind detected per line); duplicates are kept."""
    prompts: list[Prompt] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            try:
                prompt = _prompt_of(record_from_dict(_kind_of(d), d))
            except (KeyError, ValueError) as e:
                raise DataError(f"{path}:{n}: {e}") from None
            if prompt and prompt[-1].role != "assistant":
                prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: no prompts found")
    return prompts
