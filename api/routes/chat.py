"""POST /v1/chat/completions and /v1/completions: OpenAI's wire format, streamed as server-sent
events, served by the continuous-batching engine (ml.serve). Chat generation (tools, tool_choice,
response_format) is api.services.completion, shared with /v1/responses; this module only speaks the wire.

A request whose client goes away is cancelled (its engine rows are freed at the next step), streamed
or not. Only "stop", "length" and "tool_calls" reach clients as finish reasons: a generation the engine ended with
an error (or cancelled on its own) is a 5xx error body, or an error event once a stream has begun.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api import metrics
from api.deps import ProjectDep, SessionDep
from api.errors import APIError, BadRequest
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.services.completion import GenerationFailed, collect, merged_events, serve_error, start_chat
from api.services.models import visible_model
from api.services.serving import ServingHub, Target
from chatforge.storage import get_storage

router = APIRouter(prefix="/v1", tags=["chat"])


def hub(request: Request) -> ServingHub:
    app = request.app
    if getattr(app.state, "engines", None) is None:
        app.state.engines = ServingHub(app.state.settings, get_storage())
    return app.state.engines


async def _submit(engine, target: Target, prompt_ids: list[int], body, n: int, logprobs: bool,
                  top_logprobs: int):
    from ml.serve import GenerationRequest, ServeError

    handles = []
    try:
        for i in range(n):
            req = GenerationRequest(
                prompt_ids=prompt_ids, adapter=target.adapter, max_tokens=body.limit,
                temperature=body.temperature, top_p=body.top_p,
                seed=None if body.seed is None else body.seed + i, stop=body.stop,
                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                logprobs=logprobs, top_logprobs=top_logprobs)
            handles.append(engine.submit(req))
    except ServeError as e:
        for h in handles:
            h.cancel()
        raise serve_error(e) from None
    return handles


def _check(body) -> None:
    bad = body.unsupported()
    if bad:
        param, message, code = bad
        raise BadRequest(message, param=param, code=code)


def _logprobs_obj(engine, lps) -> dict | None:
    if lps is None:
        return None
    tok = engine.tokenizer

    def entry(tid: int, lp: float) -> dict:
        s = tok.decode([tid])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]}
                        for t in lps], "refusal": None}


class EngineFailure(APIError):
    """The engine ended a generation without finishing it (error, or cancelled from its side)."""

    def __init__(self, result) -> None:
        why = result.error or f"generation ended with {result.finish_reason!r}"
        super().__init__(f"generation failed: {why}", status=500, code="engine_error")


def _failed(reason: str | None) -> bool:
    return reason not in ("stop", "length")


def _error_event(ev) -> str:
    why = ev.error or f"generation ended with {ev.finish_reason!r}"
    return _sse({"error": {"message": f"generation failed: {why}", "type": "server_error", "param": None,
                           "code": "engine_error"}})


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects. The body has been read already, so the next ASGI
    message the server delivers is http.disconnect (no polling)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _results(request: Request, handles) -> list | None:
    """Every handle's Completion, or None as soon as the client disconnects. Either way the handles
    are cancelled on the way out, so an abandoned request frees its rows at the engine's next step."""
    done = asyncio.ensure_future(asyncio.gather(*(h.aresult() for h in handles)))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        return done.result() if done.done() else None
    finally:
        for h in handles:
            h.cancel()
        gone.cancel()
        done.cancel()
        await asyncio.gather(done, gone, return_exceptions=True)  # settle both; nothing left unretrieved


def _client_closed() -> Response:
    # Nobody reads it; nginx's 499 keeps the access log honest.
    return Response(status_code=499)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage_obj(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage: cached_tokens are prompt tokens the engine took from its prefix cache (for n > 1,
    the most any choice took: they all share the prompt)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


async def serving_target(request: Request, session, project, model: str):
    """The engine target for `model`, found off the event loop (it reads the database and may fetch an
    adapter from the object store: a blocking call here would stall every stream the loop serves), and the
    request's database session closed, so no connection is held while generating."""
    def find():
        try:
            return hub(request).target(visible_model(session, project, model))
        finally:
            session.close()

    return await asyncio.to_thread(find)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, session: SessionDep,
                           project: ProjectDep):
    _check(body)
    target = await serving_target(request, session, project, body.model)
    try:
        messages = [m.to_chat() for m in body.messages]
    except ValueError as e:
        raise BadRequest(str(e), param="messages", code="unsupported_content") from None
    gen = await start_chat(
        hub(request), target, messages, tools=body.tool_dicts(), tool_choice=body.tool_choice_value(),
        response_format=body.response_format.to_dict() if body.response_format else None,
        parallel_tool_calls=body.parallel_tool_calls, max_tokens=body.limit,
        max_tokens_param=body.limit_param, temperature=body.temperature,
        top_p=body.top_p, seed=body.seed, stop=body.stop, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
        n=body.n)
    engine, n_prompt = gen.engine, gen.prompt_tokens
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model

    if not body.stream:
        result = await _collect_or_gone(request, gen)
        if result is None:
            return _client_closed()
        choices = []
        for c in result.choices:
            message = {"role": "assistant", "content": c.content, "refusal": None}
            if c.tool_calls:
                message["tool_calls"] = c.tool_calls
            choices.append({"index": c.index, "message": message,
                            "logprobs": _logprobs_obj(engine, c.logprobs) if body.logprobs else None,
                            "finish_reason": c.finish_reason})
        metrics.GENERATED.labels(target.engine_id).inc(result.completion_tokens)
        usage = usage_obj(n_prompt, result.completion_tokens, result.cached_tokens)
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model,
                             "choices": choices, "usage": usage, "system_fingerprint": None})

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list, usage: dict | None = None) -> dict:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": None, "choices": choices}
        if include_usage:
            out["usage"] = usage
        return out

    async def events():
        tokens, cached = [0] * body.n, [0] * body.n
        try:
            for i in range(body.n):
                yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None}]))
            try:
                async for d in gen.deltas:
                    tokens[d.choice] = d.completion_tokens
                    if d.finish_reason is not None:
                        cached[d.choice] = d.cached_tokens
                    lp = _logprobs_obj(engine, d.logprobs) if body.logprobs and d.logprobs else None
                    if d.text or lp:
                        yield _sse(chunk([{"index": d.choice, "delta": {"content": d.text}, "logprobs": lp,
                                           "finish_reason": None}]))
                    if d.tool_calls:
                        yield _sse(chunk([{"index": d.choice, "delta": {"tool_calls": [
                            _tool_call_delta(c) for c in d.tool_calls]}, "logprobs": None, "finish_reason": None}]))
                    if d.finish_reason is not None:
                        yield _sse(chunk([{"index": d.choice, "delta": {}, "logprobs": None,
                                           "finish_reason": d.finish_reason}]))
            except GenerationFailed as e:
                yield _sse({"error": e.body()["error"]})
            else:
                if include_usage:
                    yield _sse(chunk([], usage_obj(n_prompt, sum(tokens), max(cached))))
            yield "data: [DONE]\n\n"
        finally:  # client gone or finished: free the slots at the next decode step
            gen.cancel()
            metrics.GENERATED.labels(target.engine_id).inc(sum(tokens))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _tool_call_delta(c) -> dict:
    """OpenAI's tool_calls delta: the first piece of a call has id, type and name; later ones arguments."""
    out: dict = {"index": c.index, "function": {"arguments": c.arguments}}
    if c.id is not None:
        out["id"], out["type"] = c.id, "function"
        out["function"]["name"] = c.name
    return out


async def _collect_or_gone(request: Request, gen):
    """The collected result, or None as soon as the client disconnects (the generation is cancelled)."""
    done = asyncio.ensure_future(collect(gen))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        return done.result() if done.done() else None
    finally:
        gen.cancel()
        gone.cancel()
        done.cancel()
        await asyncio.gather(done, gone, return_exceptions=True)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, session: SessionDep, project: ProjectDep):
    _check(body)
    prompt = body.prompt if isinstance(body.prompt, str) else (body.prompt[0] if len(body.prompt) == 1 else None)
    if prompt is None:
        raise BadRequest("prompt must be one string (batched prompts are not supported)", param="prompt")
    target = await serving_target(request, session, project, body.model)
    from ml.serve import ServeError

    engine = await asyncio.to_thread(hub(request).engine_for, target)
    try:
        engine.check_room(body.n)  # an overloaded server refuses before tokenizing
    except ServeError as e:
        raise serve_error(e) from None
    tokenizer = hub(request).tokenizer_for(engine, target)
    prompt_ids = (await asyncio.to_thread(tokenizer, prompt, add_special_tokens=False))["input_ids"]
    if not prompt_ids:
        raise BadRequest("prompt is empty", param="prompt")
    top = body.logprobs or 0
    handles = await _submit(engine, target, prompt_ids, body, body.n, body.logprobs is not None, top)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def legacy_lp(lps):
        if lps is None:
            return None
        tok = engine.tokenizer
        return {"tokens": [tok.decode([t.token_id]) for t in lps], "token_logprobs": [t.logprob for t in lps],
                "top_logprobs": [{tok.decode([i]): v for i, v in t.top} for t in lps], "text_offset": []}

    if not body.stream:
        results = await _results(request, handles)
        if results is None:
            return _client_closed()
        for r in results:
            if _failed(r.finish_reason):
                raise EngineFailure(r)
        n_out = sum(len(r.token_ids) for r in results)
        cached = max((r.usage.cached_tokens for r in results if r.usage is not None), default=0)
        return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                             "logprobs": legacy_lp(r.logprobs)} for i, r in enumerate(results)],
                "usage": usage_obj(len(prompt_ids), n_out, cached)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        n_out, cached = 0, 0
        try:
            async for i, ev in merged_events(handles):
                if ev.finish_reason is not None and _failed(ev.finish_reason):
                    yield _error_event(ev)
                    break
                n_out += len(ev.token_ids)
                if ev.usage is not None:
                    cached = max(cached, ev.usage.cached_tokens)
                if ev.text or ev.finish_reason:
                    yield _sse({"id": cid, "object": "text_completion", "created": created, "model": body.model,
                                "choices": [{"index": i, "text": ev.text, "logprobs": legacy_lp(ev.logprobs),
                                             "finish_reason": ev.finish_reason}]})
            else:
                if include_usage:
                    yield _sse({"id": cid, "object": "text_completion", "created": created, "model": body.model,
                                "choices": [], "usage": usage_obj(len(prompt_ids), n_out, cached)})
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                h.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
