"""Chat generation shared by /v1/chat/completions and /v1/responses: messages + tools + tool_choice +
response_format + sampling settings in; text deltas, tool-call deltas and a final result out.

Owns checking tools / tool_choice / response_format (BadRequest naming the field), rendering the prompt
with the model's tool format (ml.data.render, the function training uses), choosing the grammar for
constrained decoding (ml.serve.constrained), submitting n engine requests and turning engine events
into deltas. It knows nothing about OpenAI's wire shapes of either endpoint; the routes do that.

Tool choice: "none" renders the tools but leaves the reply as text; "auto" (the default with tools)
decodes freely and parses `<tool_call>` blocks out of the text; "required" and a named function
constrain decoding to one or more tool-call blocks (one with parallel_tool_calls=false) whose arguments
match the tool's parameters schema, so they always parse and validate. response_format json_object /
json_schema constrains the reply to JSON (with tools, only when tool_choice is "none").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from api.errors import APIError, BadRequest, RateLimited

TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class ToolCallDelta:
    """A piece of one tool call: the first carries id and name (arguments ""), later ones arguments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class ChatDelta:
    choice: int
    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list | None = None  # ml.serve.TokenLogprob of the tokens behind `text` (plain text only)
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" on a choice's last delta
    prompt_tokens: int = 0
    completion_tokens: int = 0  # this choice's tokens so far
    cached_tokens: int = 0  # on a choice's last delta: prompt tokens the engine took from its prefix cache


@dataclass
class ChatChoice:
    index: int
    content: str | None
    tool_calls: list[dict[str, Any]]  # OpenAI shape: {"id", "type": "function", "function": {...}}
    finish_reason: str
    logprobs: list | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class ChatResult:
    choices: list[ChatChoice]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache (the most any choice reused)


@dataclass
class ChatGeneration:
    engine_id: str
    engine: Any
    prompt_tokens: int
    deltas: AsyncIterator[ChatDelta]
    cancel: Callable[[], None]
    handles: list


class GenerationFailed(APIError):
    """The engine ended a generation without finishing it (error, or cancelled from its side)."""

    type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(f"generation failed: {message}", status=500, code="engine_error")


@dataclass(frozen=True)
class _Plan:
    grammar: Any  # ml.serve.GrammarSpec | None
    parse_tools: bool  # parse <tool_call> blocks out of the text
    names: frozenset[str]


def _tool_functions(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(
            t.get("function"), dict
        ):
            raise BadRequest(f"tools[{i}]: only function tools are supported", param=f"tools[{i}]",
                             code="unsupported_parameter")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}].function.name is required", param=f"tools[{i}].function.name")
        if name in out:
            raise BadRequest(f"tools[{i}].function.name: duplicate tool {name!r}", param=f"tools[{i}].function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].function.parameters must be a JSON schema object",
                             param=f"tools[{i}].function.parameters")
        out[name] = fn
    return out


def _bad_schema(e: Exception, param: str) -> BadRequest:
    msg = str(e)
    return BadRequest(msg, param=msg.split(":", 1)[0] if ":" in msg else param, code="invalid_schema")


def plan(tools, tool_choice, response_format, parallel_tool_calls: bool = True) -> _Plan:
    """The grammar and parsing for a request; BadRequest names the offending field."""
    from ml.serve import GrammarSpec, InvalidRequest

    fns = _tool_functions(tools)
    names = frozenset(fns)
    choice = tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not name:
            raise BadRequest('tool_choice must be "none", "auto", "required" or {"type": "function", '
                             '"function": {"name": ...}}', param="tool_choice")
        if name not in fns:
            raise BadRequest(f"tool_choice: no tool named {name!r} in tools", param="tool_choice")
        choice, chosen = "named", [name]
    elif choice is None:
        choice, chosen = ("auto" if fns else "none"), list(fns)
    elif choice in TOOL_CHOICES:
        chosen = list(fns)
    else:
        raise BadRequest(f"tool_choice {choice!r} is not one of none, auto, required or a named function",
                         param="tool_choice")
    if choice in ("required", "named", "auto") and not fns:
        raise BadRequest(f"tool_choice {tool_choice!r} needs tools", param="tool_choice")

    fmt = response_format or {"type": "text"}
    kind = fmt.get("type", "text")
    if kind != "text" and choice != "none":
        raise BadRequest("response_format json_object/json_schema cannot be combined with tool calls; "
                         'set tool_choice to "none" or drop response_format', param="response_format",
                         code="unsupported_parameter")
    try:
        if choice in ("required", "named"):
            specs = [(n, fns[n].get("parameters")) for n in chosen]
            grammar = GrammarSpec.tool_calls(specs, parallel=parallel_tool_calls and choice == "required",
                                             where="tools")
            return _Plan(grammar, True, names)
        if kind == "json_object":
            return _Plan(GrammarSpec.json_object(), False, names)
        if kind == "json_schema":
            js = fmt.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise BadRequest("response_format.json_schema must be an object with a schema",
                                 param="response_format.json_schema")
            schema = js.get("schema") or {"type": "object"}
            return _Plan(GrammarSpec.json_schema(schema, where="response_format.json_schema.schema"), False,
                         names)
        if kind != "text":
            raise BadRequest(f"response_format type {kind!r} is not supported", param="response_format.type")
    except InvalidRequest as e:
        raise _bad_schema(e, "tools" if choice in ("required", "named") else "response_format") from None
    return _Plan(None, choice == "auto", names)


def serve_error(e: Exception) -> APIError:
    """The API error for an engine's ServeError (a full queue is a 429 with Retry-After)."""
    from ml.serve import EngineBusy

    if isinstance(e, EngineBusy):
        return RateLimited(f"The server is busy: {e}", code="engine_busy")
    return APIError(str(e), status=getattr(e, "status", 400), code=getattr(e, "code", None))


async def merged_events(handles) -> AsyncIterator[tuple[int, Any]]:
    """Events of n handles as they come, tagged with their choice index."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, h):
        async for ev in h:
            await queue.put((i, ev))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, ev = await queue.get()
            if ev is None:
                left -= 1
            else:
                yield i, ev
    finally:
        for t in tasks:
            t.cancel()


def _max_token_chars(tokenizer) -> int:
    """The most characters one token of this tokenizer stands for (cached on the tokenizer)."""
    cached = getattr(tokenizer, "_chatforge_max_token_chars", None)
    if cached is None:
        vocab = list(tokenizer.get_vocab())
        cached = max(len(tokenizer.convert_tokens_to_string([t])) for t in vocab) if vocab else 1 << 20
        tokenizer._chatforge_max_token_chars = max(cached, 1)
    return tokenizer._chatforge_max_token_chars


def check_context(engine, tokenizer, messages: list[dict[str, Any]], n_prompt: int | None,
                  max_tokens: int | None, max_tokens_param: str = "max_tokens") -> None:
    """Refuse a prompt (or prompt + max_tokens) the model's context cannot hold, naming the field (the
    reply limit as the client spelled it: max_tokens_param). With n_prompt None it is the cheap check
    before tokenizing: text longer than the context's tokens could ever spell is refused without
    rendering it."""
    limit, total = engine.max_prompt_tokens, engine.max_total_tokens
    if n_prompt is None:
        chars = sum(len(m["content"]) if isinstance(m.get("content"), str) else len(str(m.get("content")))
                    for m in messages)
        if chars > limit * _max_token_chars(tokenizer):
            raise BadRequest(f"messages: the prompt ({chars} characters) is longer than this model's context "
                             f"of {limit} prompt tokens", param="messages", code="context_length_exceeded")
        return
    if n_prompt > limit:
        raise BadRequest(f"messages: the prompt has {n_prompt} tokens; this model takes at most {limit}",
                         param="messages", code="context_length_exceeded")
    if max_tokens is not None and n_prompt + max_tokens > total:
        raise BadRequest(f"{max_tokens_param}: the prompt ({n_prompt} tokens) + {max_tokens_param} "
                         f"({max_tokens}) exceeds this model's context of {total} tokens", param=max_tokens_param,
                         code="context_length_exceeded")


def _failed(reason: str | None) -> bool:
    return reason not in ("stop", "length")


async def start_chat(
    hub,
    target,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    response_format: dict[str, Any] | None = None,
    parallel_tool_calls: bool = True,
    max_tokens: int | None = None,
    max_tokens_param: str = "max_tokens",
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logprobs: bool = False,
    top_logprobs: int = 0,
    n: int = 1,
) -> ChatGeneration:
    """Submit a chat generation (n choices) to the target's engine and return its delta stream.

    hub: api.services.serving.ServingHub; target: hub.target(model row). messages: OpenAI chat
    messages as dicts (role, content text, tool_calls, tool_call_id, name). max_tokens_param: the request
    field max_tokens came from (max_completion_tokens, max_output_tokens), named by errors about it.
    Problems found before the
    first token (bad tools or schema, busy engine, prompt too long) raise API errors here; a generation
    that fails later raises GenerationFailed from the delta iterator."""
    from ml.data.render import render_prompt
    from ml.serve import GenerationRequest, ServeError
    from ml.serve.tools import ArgumentsDelta, CallStart, ContentDelta, ToolCallStream

    p = plan(tools, tool_choice, response_format, parallel_tool_calls)
    engine = await asyncio.to_thread(hub.engine_for, target)
    try:
        engine.check_room(n)
    except ServeError as e:
        raise serve_error(e) from None
    tokenizer = hub.tokenizer_for(engine, target)
    await asyncio.to_thread(check_context, engine, tokenizer, messages, None, max_tokens, max_tokens_param)
    try:
        prompt_ids = await asyncio.to_thread(render_prompt, tokenizer, messages, True, tools or None)
    except Exception as e:  # noqa: BLE001 -- jinja TemplateError / raise_exception from the template
        raise BadRequest(f"the model's chat template cannot render these messages: {e}", param="messages") from None
    check_context(engine, tokenizer, messages, len(prompt_ids), max_tokens, max_tokens_param)
    if p.grammar is not None:
        try:
            await asyncio.to_thread(engine.prepare_grammar, p.grammar)
        except ServeError as e:
            raise _bad_schema(e, "response_format") from None
    handles = []
    try:
        for i in range(n):
            handles.append(engine.submit(GenerationRequest(
                prompt_ids=prompt_ids, adapter=target.adapter, max_tokens=max_tokens, temperature=temperature,
                top_p=top_p, seed=None if seed is None else seed + i, stop=stop,
                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logprobs=logprobs,
                top_logprobs=top_logprobs, grammar=p.grammar)))
    except ServeError as e:
        for h in handles:
            h.cancel()
        raise serve_error(e) from None

    def cancel() -> None:
        for h in handles:
            h.cancel()

    n_prompt = len(prompt_ids)

    async def deltas() -> AsyncIterator[ChatDelta]:
        parsers = [ToolCallStream(set(p.names)) if p.parse_tools else None for _ in handles]
        produced = [0] * len(handles)
        try:
            async for i, ev in merged_events(handles):
                if ev.finish_reason is not None and _failed(ev.finish_reason):
                    raise GenerationFailed(ev.error or f"generation ended with {ev.finish_reason!r}")
                produced[i] += len(ev.token_ids)
                cached = ev.usage.cached_tokens if ev.usage is not None else 0
                parser = parsers[i]
                if parser is None:
                    if ev.text or ev.logprobs or ev.finish_reason:
                        yield ChatDelta(i, ev.text, logprobs=list(ev.logprobs) if ev.logprobs else None,
                                        finish_reason=ev.finish_reason, prompt_tokens=n_prompt,
                                        completion_tokens=produced[i], cached_tokens=cached)
                    continue
                out = list(parser.feed(ev.text))
                if ev.finish_reason is not None:
                    out += list(parser.finish())
                text, calls = "", []
                for e in out:
                    if isinstance(e, ContentDelta):
                        text += e.text
                    elif isinstance(e, CallStart):
                        calls.append(ToolCallDelta(e.index, e.id, e.name, ""))
                    elif isinstance(e, ArgumentsDelta):
                        if calls and calls[-1].index == e.index:
                            calls[-1].arguments += e.text
                        else:
                            calls.append(ToolCallDelta(e.index, None, None, e.text))
                finish = ev.finish_reason
                if finish == "stop" and parser.calls:
                    finish = "tool_calls"
                if text or calls or finish:
                    yield ChatDelta(i, text, calls, finish_reason=finish, prompt_tokens=n_prompt,
                                    completion_tokens=produced[i], cached_tokens=cached)
        finally:
            cancel()

    return ChatGeneration(target.engine_id, engine, n_prompt, deltas(), cancel, handles)


async def collect(gen: ChatGeneration) -> ChatResult:
    """Fold a generation's deltas into whole choices."""
    texts: dict[int, str] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    lps: dict[int, list] = {}
    finish: dict[int, str] = {}
    tokens: dict[int, int] = {}
    cached: dict[int, int] = {}
    async for d in gen.deltas:
        texts[d.choice] = texts.get(d.choice, "") + d.text
        for c in d.tool_calls:
            slot = calls.setdefault(d.choice, {}).setdefault(
                c.index, {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}})
            slot["function"]["arguments"] += c.arguments
        if d.logprobs:
            lps.setdefault(d.choice, []).extend(d.logprobs)
        tokens[d.choice] = d.completion_tokens
        if d.finish_reason:
            finish[d.choice] = d.finish_reason
            cached[d.choice] = d.cached_tokens
    choices = []
    for i in range(len(gen.handles)):
        tc = [calls[i][k] for k in sorted(calls.get(i, {}))]
        content = texts.get(i, "")
        choices.append(ChatChoice(i, (content or None) if tc else content, tc, finish.get(i, "stop"),
                                  lps.get(i), tokens.get(i, 0), cached.get(i, 0)))
    return ChatResult(choices, gen.prompt_tokens, sum(c.completion_tokens for c in choices),
                      max((c.cached_tokens for c in choices), default=0))
