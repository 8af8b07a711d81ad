"""OpenAI wire schemas for chat and legacy completions (one definition each).

Every parameter OpenAI defines is either honoured or refused with a 400 that names it; nothing is
silently ignored. Fields we accept but that do not change generation (user, metadata, store) are
documented as such.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI parameters this server does not implement: a request using them gets a 400 naming them.
UNSUPPORTED = {
    "tools": "tool calling is not supported by the built-in engine",
    "tool_choice": "tool calling is not supported by the built-in engine",
    "functions": "function calling is not supported by the built-in engine",
    "function_call": "function calling is not supported by the built-in engine",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "best_of": "best_of is not supported",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "service_tier": None,  # accepted, no effect (there is one tier)
    "parallel_tool_calls": None,
    "user": None,
    "metadata": None,
    "store": None,
}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text":
                raise ValueError(f"content part type {p.get('type')!r} is not supported (text only)")
            parts.append(p.get("text", ""))
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in v):
            raise ValueError("stop sequences must be non-empty")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED:
                if UNSUPPORTED[name] is not None and value not in (None, False, [], {}):
                    return name, UNSUPPORTED[name]
            else:
                return name, f"unknown parameter {name!r}"
        return None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @property
    def limit(self) -> int | None:
        """None = OpenAI's default for chat: whatever room the context leaves after the prompt (the
        engine bounds it by its max_total_tokens, itself at most the model's context)."""
        return self.max_completion_tokens or self.max_tokens


# OpenAI's default for the legacy endpoint (also when max_tokens is sent as null).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)

    @property
    def limit(self) -> int:
        return self.max_tokens if self.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
