"""One request's state inside the engine, and how each sampled token becomes a streamed event.

Owns per-sequence progress (cache row, positions written, generated ids) and the end conditions
(stop token, max_tokens, stop string) applied to each new token. It does not pick rows or run the
model (engine.py) and does not sample (sampling.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ml.serve.detokenize import IncrementalDetokenizer, StopStringMatcher
from ml.serve.handle import RequestHandle
from ml.serve.lora import LoraAdapter
from ml.serve.request import FinishReason, GenerationEvent, GenerationRequest, TokenLogprob, Usage
from ml.serve.sampling import SamplingState


@dataclass(eq=False)
class Sequence:
    handle: RequestHandle
    req: GenerationRequest
    adapter_name: str | None
    max_new: int
    stop_ids: frozenset[int]
    sampling: SamplingState
    detok: IncrementalDetokenizer
    matcher: StopStringMatcher
    order: int  # admission order: prefill goes oldest first
    adapter: LoraAdapter | None = None  # held while running, so eviction cannot pull it away
    row: int = -1  # KV-cache row, -1 when not running
    cached: int = 0  # positions written to the KV cache
    reused: int = 0  # prompt positions copied from the prefix cache instead of computed
    decoding: bool = False
    generated: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_ids)

    def accept(self, tok: int, logprob: TokenLogprob | None) -> GenerationEvent:
        """Record a sampled token; the event is final (finish_reason set) if the sequence ended."""
        self.generated.append(tok)
        finish: FinishReason | None = None
        grammar = self.sampling.grammar
        if tok in self.stop_ids:
            delta, finish = self.detok.flush(), "stop"  # the stop token's own text is never shown
        else:
            delta = self.detok.add(tok)
            if grammar is not None and grammar.done:  # complete: nothing more is allowed
                delta, finish = delta + self.detok.flush(), "stop"
            elif len(self.generated) >= self.max_new:
                delta, finish = delta + self.detok.flush(), "length"
        text, matched = self.matcher.push(delta)
        if matched:
            finish = "stop"
        elif finish is not None:
            text += self.matcher.flush()
        logprobs = (logprob,) if logprob is not None else None
        if finish is None:
            return GenerationEvent(text=text, token_ids=(tok,), logprobs=logprobs)
        return self.final_event(text, finish, token_ids=(tok,), logprobs=logprobs)

    def final_event(
        self,
        text: str,
        reason: FinishReason,
        token_ids: tuple[int, ...] = (),
        logprobs: tuple[TokenLogprob, ...] | None = None,
        error: str | None = None,
    ) -> GenerationEvent:
        usage = Usage(
            prompt_tokens=self.prompt_len, completion_tokens=len(self.generated), cached_tokens=self.reused
        )
        return GenerationEvent(
            text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=reason, usage=usage, error=error
        )
