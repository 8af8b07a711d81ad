"""What judges a sampled reply during online RL: a saved reward model, or any Python callable.

Owns the RewardFn contract (conversations ending with the reply -> one float each), resolving a
reward-model folder into one, and the adapter that presents a RewardFn to trl's GRPO/RLOO trainers
(which call reward functions with prompts and completions). Training reward models is ml.rl.reward.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml.records import Message

Conversation = Sequence[Message]
RewardFn = Callable[[list[tuple[Message, ...]]], Sequence[float]]
RewardSource = str | Path | RewardFn


class ModelReward:
    """RewardFn backed by a reward-model folder (see ml.rl.reward_model)."""

    def __init__(self, path: str | Path, batch_size: int = 8, max_length: int | None = 1024) -> None:
        from ml.rl.reward_model import load_reward_model

        self.path = Path(path)
        self.model, self.tokenizer = load_reward_model(self.path)
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, conversations: list[tuple[Message, ...]]) -> list[float]:
        from ml.rl.reward_model import score

        return score(self.model, self.tokenizer, conversations, self.batch_size, self.max_length)


def as_reward_fn(source: RewardSource) -> RewardFn:
    """A callable scorer for `source`: a reward-model folder path, or a RewardFn returned as is."""
    if isinstance(source, (str, Path)):
        return ModelReward(source)
    if callable(source):
        return source
    raise TypeError(f"reward must be a reward-model folder or a callable, got {type(source).__name__}")


def _message(m: Message | dict[str, Any]) -> Message:
    return m if isinstance(m, Message) else Message.from_dict(m)


def encode_prompt(prompt: Sequence[Message]) -> str:
    return json.dumps([m.to_dict() for m in prompt], ensure_ascii=False)


def decode_prompt(prompt: str | list) -> list:
    """Message dicts/Messages from a dataset "prompt" value (JSON string, message list, or plain text)."""
    if isinstance(prompt, list):
        return prompt
    if prompt.startswith("["):
        try:
            return json.loads(prompt)
        except json.JSONDecodeError:
            pass
    return [Message("user", prompt)]


class TrlRewardFunc:
    """A RewardFn in the shape trl's GRPOTrainer / RLOOTrainer call: f(prompts, completions, **kw) -> floats.

    Prompts arrive as the dataset's "prompt" values: message lists, or (as ml.rl.online stores them,
    so no field of a message is lost to Arrow) JSON strings of message lists. Completions arrive as
    text or as [{"role": "assistant", "content": text}]. Both are rebuilt into canonical conversations.
    """

    def __init__(self, fn: RewardFn, name: str = "reward") -> None:
        self.fn = fn
        self.__name__ = name

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        conversations = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(completion, list):
                text = "".join(m.get("content") or "" for m in completion)
            else:
                text = str(completion)
            history = [_message(m) for m in decode_prompt(prompt)]
            conversations.append(tuple(history) + (Message("assistant", text),))
        return [float(x) for x in self.fn(conversations)]
