"""What a caller hands the engine and what it gets back: requests, streamed events, errors.

Owns the plain data shapes of the serving contract (GenerationRequest, GenerationEvent, Completion,
Usage, TokenLogprob) and the error classes an API maps to HTTP statuses. It does not schedule, sample
or talk HTTP; OpenAI wire formats are the API's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ml.serve.constrained import GrammarSpec

FinishReason = Literal["stop", "length", "cancelled", "error"]

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


class ServeError(Exception):
    """Base class; `status` is the HTTP status an API should answer with."""

    status = 500
    code = "server_error"


class EngineBusy(ServeError):
    """The waiting queue is full; retry later."""

    status = 429
    code = "engine_busy"


class RequestTooLarge(ServeError):
    """Prompt (or prompt + max_tokens) exceeds what the engine accepts."""

    status = 400
    code = "context_length_exceeded"


class InvalidRequest(ServeError):
    status = 400
    code = "invalid_request"


class UnknownAdapter(ServeError, KeyError):
    status = 404
    code = "model_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown adapter"


class UnsupportedAdapter(ServeError):
    """The adapter folder is not a plain LoRA this engine can batch (DoRA, modules_to_save, ...)."""

    status = 400
    code = "unsupported_adapter"


class EngineClosed(ServeError):
    status = 503
    code = "engine_closed"


@dataclass
class GenerationRequest:
    """One sequence to generate. n>1 completions are n requests (give each its own seed)."""

    prompt_ids: list[int]
    adapter: str | None = None
    """Registered adapter name; None (or "__base__") = the base model."""
    max_tokens: int | None = None
    """None = as many as fit in the engine's max_total_tokens."""
    temperature: float = 1.0
    """0 = greedy (token-identical to transformers generate with do_sample=False)."""
    top_p: float = 1.0
    seed: int | None = None
    """Same seed + same request = same text. None = a fresh random seed."""
    stop: list[str] | None = None
    """Up to 4 strings matched on decoded text; the match and anything after it is never emitted."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    stop_token_ids: list[int] | None = None
    """None = the model's eos ids. [] = never stop on a token (only max_tokens / stop strings)."""
    request_id: str | None = None
    grammar: GrammarSpec | None = None
    """Constrained decoding: every token is one the grammar allows, and the request ends ("stop") when
    the grammar is complete. Only this row is masked; its batch neighbours decode as if it were free."""


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one sampled token under the model (raw logits, before penalties and
    temperature), with the `top` most likely alternatives as (token_id, logprob), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache (OpenAI's
    usage.prompt_tokens_details.cached_tokens)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationEvent:
    """An increment of one request's output. `text` may be empty while bytes of a character or a
    possible stop string are held back. The last event has finish_reason and usage set."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Completion:
    """All events of a request folded together (handle.result())."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None

    def add(self, ev: GenerationEvent) -> None:
        self.text += ev.text
        self.token_ids.extend(ev.token_ids)
        if ev.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(ev.logprobs)
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
            self.usage = ev.usage
            self.error = ev.error


def validate_request(req: GenerationRequest, vocab_size: int) -> None:
    """Reject malformed sampling parameters early (InvalidRequest); sizes are checked by the engine."""
    if not req.prompt_ids:
        raise InvalidRequest("prompt is empty")
    if min(req.prompt_ids) < 0 or max(req.prompt_ids) >= vocab_size:
        raise InvalidRequest(f"prompt token ids must be in [0, {vocab_size})")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise InvalidRequest("max_tokens must be >= 1")
    if req.temperature < 0:
        raise InvalidRequest("temperature must be >= 0")
    if not 0 < req.top_p <= 1:
        raise InvalidRequest("top_p must be in (0, 1]")
    if not -2 <= req.presence_penalty <= 2 or not -2 <= req.frequency_penalty <= 2:
        raise InvalidRequest("presence_penalty and frequency_penalty must be in [-2, 2]")
    if req.stop is not None:
        if len(req.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in req.stop):
            raise InvalidRequest("stop strings must be non-empty")
    if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs")
