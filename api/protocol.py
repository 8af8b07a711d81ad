"""OpenAI wire schemas for chat and legacy completions (one definition each).

Every parameter OpenAI defines is either honoured or refused with a 400 that names it, and so is any
key nobody defines ("Unrecognized request argument supplied: <key>"); nothing is silently ignored.
Fields we accept but that do not change generation (user, metadata, store, ...) are documented as such.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI parameters this server does not implement: a request using them gets a 400 naming them. Those
# mapped to None are accepted and change nothing (their types are in NO_OP_TYPES, for the wire schema).
UNSUPPORTED = {
    "functions": "the deprecated functions parameter is not supported; use tools",
    "function_call": "the deprecated function_call parameter is not supported; use tool_choice",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "best_of": "best_of is not supported",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "verbosity": "verbosity is not supported",
    "moderation": "moderation is not supported",
    "service_tier": None,  # accepted, no effect (there is one tier)
    "user": None,
    "metadata": None,
    "store": None,
    "safety_identifier": None,
    "prompt_cache_key": None,  # prefixes are cached automatically, whatever the key
    "prompt_cache_retention": None,
    "prompt_cache_options": None,
}
NO_OP_TYPES = {"user": "string", "metadata": "object", "store": "boolean", "service_tier": "string",
               "safety_identifier": "string", "prompt_cache_key": "string",
               "prompt_cache_retention": "string", "prompt_cache_options": "object", "stream_options": "object"}


def refused_parameter(extra: dict[str, Any] | None,
                      known: dict[str, str | None]) -> tuple[str, str, str] | None:
    """The first key of a request's extra (undeclared) fields that gets a 400, as (param, message, code):
    a parameter in `known` with a reason it is not supported (unless sent empty: null, false, [] or {}),
    or one nobody defines, in OpenAI's words. Keys `known` maps to None are accepted without effect."""
    for name, value in (extra or {}).items():
        if name not in known:
            return name, f"Unrecognized request argument supplied: {name}", "unknown_parameter"
        if known[name] is not None and value not in (None, False, [], {}):
            return name, f"{name}: {known[name]}", "unsupported_parameter"
    return None


def no_op_properties(known: dict[str, str | None]) -> dict[str, dict[str, str]]:
    """Wire-schema properties of the parameters accepted without effect."""
    return {name: {"type": NO_OP_TYPES[name], "description": "accepted; no effect"}
            for name, why in known.items() if why is None}


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def to_chat(self) -> dict[str, Any]:
        """The message as the renderer takes it (developer -> system, content parts -> text)."""
        d: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in self.tool_calls]
            if not self.content:
                d["content"] = None
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            d["name"] = self.name
        return d

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


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.json_schema is not None:
            d["json_schema"] = self.json_schema.model_dump(by_alias=True, exclude_none=True)
        return d


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


def _documented_extras(schema: dict[str, Any]) -> None:
    """The wire schema: a key outside it is a 400 naming it, except OpenAI's no-op ones (UNSUPPORTED: None)."""
    schema["additionalProperties"] = False
    schema["properties"].update(no_op_properties(UNSUPPORTED))


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_documented_extras)
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

    def unsupported(self) -> tuple[str, str, str] | None:
        """(param, message, code) of the first parameter refused with a 400 (see refused_parameter)."""
        return refused_parameter(self.model_extra, UNSUPPORTED)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def tool_choice_value(self) -> str | dict[str, Any] | None:
        c = self.tool_choice
        return c.model_dump() if isinstance(c, NamedToolChoice) else c

    @property
    def limit(self) -> int | None:
        """None = OpenAI's default for chat: whatever room the context leaves after the prompt (the
        engine bounds it by its max_total_tokens, itself at most the model's context)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def limit_param(self) -> str:
        """The field `limit` comes from, as the client spelled it (errors about the limit name it)."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


# OpenAI's default for the legacy endpoint (also when max_tokens is sent as null).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)

    @property
    def limit(self) -> int:
        return self.max_tokens if self.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
