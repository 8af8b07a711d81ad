"""Canonical training records: the one shape every uploaded format is converted into.

Owns the dataclasses and their JSON form (one JSON object per line in the stored canonical file).
Format detection and conversion live in ml.data; this module only defines the target shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


class DataError(ValueError):
    """The training data cannot be used as it is: the user must change the file (never retried).

    Raised by the data layer (reading, rendering, tokenising records) so that a worker can tell the
    user's data apart from a bad setting or a library failure; ValueError for older callers."""


Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
Kind = Literal["sft", "preference", "prompts"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # OpenAI's per-message weight: 0 = shown as context but not learned. None = default
    # (assistant turns are learned, every other role is not).
    weight: float | None = None
    # OpenAI tool calls on an assistant turn, kept verbatim for the chat template.
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None

    @property
    def learned(self) -> bool:
        if self.role != "assistant":
            return False
        return self.weight is None or self.weight > 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.weight is not None:
            d["weight"] = self.weight
        if self.tool_calls is not None:
            d["tool_calls"] = self.tool_calls
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(
            role=d["role"],
            content=d.get("content") or "",
            weight=d.get("weight"),
            tool_calls=d.get("tool_calls"),
            name=d.get("name"),
        )


def _msgs(items: list[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple(Message.from_dict(m) for m in items)


@dataclass(frozen=True)
class Conversation:
    """Supervised example: a chat whose learned assistant turns are the training signal."""

    messages: tuple[Message, ...]
    tools: list[dict[str, Any]] | None = None
    kind: Kind = field(default="sft", init=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            d["tools"] = self.tools
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conversation:
        return cls(messages=_msgs(d["messages"]), tools=d.get("tools"))


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt conversation (may be multi-turn: earlier turns are history) and two replies."""

    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    kind: Kind = field(default="preference", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": self.chosen.to_dict(),
            "rejected": self.rejected.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferenceExample:
        return cls(
            prompt=_msgs(d["prompt"]),
            chosen=Message.from_dict(d["chosen"]),
            rejected=Message.from_dict(d["rejected"]),
        )


@dataclass(frozen=True)
class PromptExample:
    """Prompt-only example for online RL (PPO / RLOO / GRPO): the policy writes the reply."""

    prompt: tuple[Message, ...]
    kind: Kind = field(default="prompts", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": [m.to_dict() for m in self.prompt]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptExample:
        return cls(prompt=_msgs(d["prompt"]))


Record = Conversation | PreferenceExample | PromptExample
_BY_KIND = {"sft": Conversation, "preference": PreferenceExample, "prompts": PromptExample}


def record_from_dict(kind: str, d: dict[str, Any]) -> Record:
    return _BY_KIND[kind].from_dict(d)


def write_canonical(path, records) -> int:
    """Write records as canonical JSONL; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_canonical(path, kind: str) -> Iterator[Record]:
    """Stream records back from a canonical JSONL file written by write_canonical."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield record_from_dict(kind, json.loads(line))
