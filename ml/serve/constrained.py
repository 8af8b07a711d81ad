"""Grammar-constrained decoding for single rows of the continuous batch (xgrammar).

Owns what a constrained request asks for (GrammarSpec: any JSON object, a JSON schema, or one or more
ChatForge tool-call blocks whose arguments match each tool's parameters schema), compiling it once per
engine (cached), checking schemas for keywords the grammar cannot enforce, and the per-row matcher that
masks a row's logits before sampling and advances with each accepted token. Free rows never touch any
of it, so their logits and tokens are exactly those of an unconstrained batch.

Why xgrammar: on SmolLM2's 49k vocabulary it computed a token mask and advanced in ~4 us per token vs
~15 us for llguidance, and compiled a 7-property schema in ~14 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ml.data.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_SEPARATOR
from ml.serve.request import InvalidRequest

# JSON Schema keywords the grammar enforces (or that do not constrain output). Anything else is refused
# with a 400 naming where it is: a silently ignored keyword would let invalid output through.
SUPPORTED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
        "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "minimum",
        "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "format",
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "nullable",
    }
)  # fmt: skip
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties")
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def check_schema(schema: Any, where: str) -> None:
    """Raise InvalidRequest naming the first unsupported feature (e.g. `schema.properties.tags.uniqueItems`)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}: a JSON schema must be an object")
    if "format" in schema:  # the grammar of a format ignores length and pattern bounds
        for key in ("minLength", "maxLength", "pattern"):
            if key in schema:
                raise InvalidRequest(f"{where}.{key}: cannot be combined with format")
    for key, value in schema.items():
        here = f"{where}.{key}"
        if key not in SUPPORTED_KEYWORDS:
            raise InvalidRequest(f"{here}: JSON schema keyword {key!r} is not supported by constrained decoding")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in _TYPES]
            if bad:
                raise InvalidRequest(f"{here}: unknown type {bad[0]!r}")
        elif key in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise InvalidRequest(f"{here}: must be an object")
            for name, sub in value.items():
                check_schema(sub, f"{here}.{name}")
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list):
                raise InvalidRequest(f"{here}: must be an array")
            for i, sub in enumerate(value):
                check_schema(sub, f"{here}[{i}]")
        elif key in _SCHEMA_ONE:
            check_schema(value, here)
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise InvalidRequest(f"{here}: only local references ('#/...') are supported")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: str  # the parameters JSON schema, serialised (hashable)


@dataclass(frozen=True)
class GrammarSpec:
    """What a constrained row must produce.

    json_object: any JSON object. json_schema: an instance of `schema` (serialised JSON). tool_calls:
    one (or, with parallel, one or more) ChatForge tool-call blocks, each naming one of `tools` with
    arguments valid for its parameters schema; nothing else."""

    kind: Literal["json_object", "json_schema", "tool_calls"]
    schema: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    parallel: bool = True

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: dict[str, Any], where: str = "schema") -> GrammarSpec:
        check_schema(schema, where)
        return cls("json_schema", schema=json.dumps(schema, sort_keys=True))

    @classmethod
    def tool_calls(
        cls, tools: list[tuple[str, dict[str, Any] | None]], parallel: bool = True, where: str = "tools"
    ) -> GrammarSpec:
        """tools: (name, parameters schema or None = any object)."""
        specs = []
        for i, (name, params) in enumerate(tools):
            params = params if params else {"type": "object"}
            check_schema(params, f"{where}[{i}].function.parameters")
            specs.append(ToolSpec(name, json.dumps(params, sort_keys=True)))
        if not specs:
            raise InvalidRequest(f"{where}: no tool to call")
        return cls("tool_calls", tools=tuple(specs), parallel=parallel)

    def structural_tag(self) -> dict[str, Any]:
        tags = [
            {
                "type": "tag",
                "begin": f'{TOOL_CALL_OPEN}{{"name": {json.dumps(t.name, ensure_ascii=False)}, "arguments": ',
                "content": {"type": "json_schema", "json_schema": json.loads(t.parameters)},
                "end": "}" + TOOL_CALL_CLOSE,
            }
            for t in self.tools
        ]
        return {
            "type": "structural_tag",
            "format": {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": TOOL_CALL_SEPARATOR,
                "at_least_one": True,
                "stop_after_first": not self.parallel,
            },
        }


class GrammarCache:
    """Compiles GrammarSpecs for one tokenizer/vocabulary; thread-safe, LRU-cached by spec."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: frozenset[int], size: int = 128) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids) or None
        )
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec):
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        try:
            if spec.kind == "json_object":
                compiled = self.compiler.compile_builtin_json_grammar()
            elif spec.kind == "json_schema":
                compiled = self.compiler.compile_json_schema(spec.schema, any_whitespace=False, strict_mode=True)
            else:
                compiled = self.compiler.compile_structural_tag(json.dumps(spec.structural_tag()))
        except Exception as e:  # noqa: BLE001 -- xgrammar reports bad schemas as RuntimeError/ValueError
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InvalidRequest(f"the schema cannot be compiled to a grammar: {msg}") from None
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, spec: GrammarSpec, stop_ids: frozenset[int]) -> RowGrammar:
        compiled = self.compile(spec)
        stops = sorted(stop_ids)
        m = self._xgr.GrammarMatcher(
            compiled, override_stop_tokens=stops or None, terminate_without_stop_token=not stops
        )
        return RowGrammar(m)


class RowGrammar:
    """One row's matcher: fills its bitmask row, advances with each accepted token."""

    __slots__ = ("done", "failed", "matcher")

    def __init__(self, matcher) -> None:
        self.matcher = matcher
        self.done = False  # the grammar is complete and needs nothing more (the row ends)
        self.failed = False

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            self.failed = True
        self.done = self.failed or self.matcher.is_terminated()


def mask_rows(logits: torch.Tensor, grammars: list[tuple[int, RowGrammar]]) -> torch.Tensor:
    """A copy of logits [n, vocab] where each listed row allows only its grammar's next tokens."""
    import xgrammar as xgr

    n, vocab = logits.shape
    bitmask = xgr.allocate_token_bitmask(n, vocab)
    for i, g in grammars:
        g.fill(bitmask, i)
    masked = logits.clone()
    xgr.apply_token_bitmask_inplace(
        masked, bitmask.to(masked.device, non_blocking=True), indices=[i for i, _ in grammars]
    )
    return masked
