"""/v1/responses: OpenAI's Responses API (create, streamed or not; retrieve; delete; input items).

Thin: parsing, authorisation and HTTP streaming. Conversation state and the wire shapes live in
api.services.responses; generation is the chat completions path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api import metrics
from api.deps import ProjectDep, SessionDep
from api.errors import APIError, BadRequest
from api.services import responses as svc
from api.services.completion import ChatDelta
from api.services.models import visible_model
from api.services.serving import ServingHub
from chatforge.db.models import Model
from chatforge.db.session import session_factory
from chatforge.storage import get_storage

router = APIRouter(prefix="/v1", tags=["responses"])


def _hub(request: Request) -> ServingHub:
    app = request.app  # the one ServingHub of this process, shared with /v1/chat/completions
    if getattr(app.state, "engines", None) is None:
        app.state.engines = ServingHub(app.state.settings, get_storage())
    return app.state.engines


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check(body: svc.ResponseCreateRequest) -> None:
    bad = body.unsupported()
    if bad:
        param, message, code = bad
        raise BadRequest(message, param=param, code=code)


async def _events(builder: svc.ResponseBuilder, deltas: AsyncIterator[ChatDelta],
                  engine_id: str) -> AsyncIterator[dict[str, Any]]:
    """Every stream event of one response, the final one included."""
    for ev in builder.start():
        yield ev
    output_tokens = 0
    try:
        async for d in deltas:
            if d.text:
                for ev in builder.text(d.text):
                    yield ev
            for call in d.tool_calls:
                for ev in builder.tool_call(call.index, call.id, call.name, call.arguments):
                    yield ev
            if d.finish_reason is not None:
                output_tokens = d.completion_tokens
                for ev in builder.finish(d.finish_reason, d.prompt_tokens, d.completion_tokens, d.cached_tokens):
                    yield ev
    except APIError as e:
        for ev in builder.fail(e.message):
            yield ev
    finally:
        metrics.GENERATED.labels(engine_id).inc(output_tokens)


def _save(project_id: str, builder: svc.ResponseBuilder, input_items: list, context: list) -> None:
    """Store a finished response in its own session (the request's one is closed while generating)."""
    from chatforge.db.models import Project

    with session_factory()() as session:
        svc.save(session, session.get(Project, project_id), builder.response(), input_items, context)
        session.commit()


@router.post("/responses")
async def create_response(body: svc.ResponseCreateRequest, request: Request, session: SessionDep,
                          project: ProjectDep):
    _check(body)
    fmt = svc.text_format(body.text)
    tools = svc.chat_tools(body.tools)
    tool_choice = svc.chat_tool_choice(body.tool_choice)
    input_items = svc.normalize_input(body.input)

    def read() -> tuple[list, Model]:  # off the event loop: database reads block
        try:
            prior = svc.prior_context(session, project, body.previous_response_id)
            found = visible_model(session, project, body.model)
            session.commit()
            return prior, found
        finally:
            session.close()  # do not hold a connection while generating

    project_id = project.id
    prior, row = await asyncio.to_thread(read)
    context = prior + input_items
    messages = svc.chat_messages(body.instructions, context)

    gen = await svc.generate(_hub(request), row, messages, tools=tools, tool_choice=tool_choice,
                         response_format=svc.chat_response_format(fmt), max_tokens=body.max_output_tokens,
                         parallel_tool_calls=body.parallel_tool_calls,
                         temperature=1.0 if body.temperature is None else body.temperature,
                         top_p=1.0 if body.top_p is None else body.top_p)
    builder = svc.ResponseBuilder(body=body, fmt=fmt, previous_response_id=body.previous_response_id)

    async def finish() -> None:
        if body.store and builder.status in ("completed", "incomplete"):
            await asyncio.to_thread(_save, project_id, builder, input_items, context)

    if not body.stream:
        async def drain() -> None:
            async for _ in _events(builder, gen.deltas, gen.engine_id):
                pass

        done = asyncio.ensure_future(drain())
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gen.cancel()
            gone.cancel()
            if not done.done():
                done.cancel()
            await asyncio.gather(done, gone, return_exceptions=True)
        if done.cancelled():
            return Response(status_code=499)  # client gone; nobody reads it
        done.result()
        if builder.status == "failed":
            raise APIError(f"generation failed: {builder.error['message']}", status=500, code="engine_error")
        await finish()
        return JSONResponse(builder.response())

    async def stream():
        try:
            async for ev in _events(builder, gen.deltas, gen.engine_id):
                if ev["type"] in ("response.completed", "response.incomplete"):
                    await finish()  # stored before the client hears it is done
                yield svc.sse(ev)
        finally:
            gen.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/responses/{response_id}")
def retrieve_response(response_id: str, session: SessionDep, project: ProjectDep):
    return svc.stored(session, project, response_id).body


@router.delete("/responses/{response_id}")
def delete_response(response_id: str, session: SessionDep, project: ProjectDep):
    svc.delete(session, project, response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items")
def list_input_items(response_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                     limit: int = Query(20), order: Literal["asc", "desc"] = "desc"):
    return svc.input_items_page(svc.stored(session, project, response_id), after, limit, order)
