"""OpenAI's Responses API on top of chat generation: input items to chat messages, conversation state
(`previous_response_id`) in the `responses` table, and the response object and its typed stream events.

It owns the wire shapes of /v1/responses and the assembly of generation deltas into output items. It
does not generate: the text and tool-call deltas come from the same path as /v1/chat/completions.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.errors import APIError, BadRequest, NotFound
from api.protocol import no_op_properties, refused_parameter
from chatforge.db.models import Project, StoredResponse

# Parameters of POST /v1/responses this server does not implement (400 naming them when set), and
# those accepted without effect (None). Any other key is refused too (api.protocol.refused_parameter).
UNSUPPORTED = {
    "reasoning": "reasoning settings are not supported (no reasoning models)",
    "background": "background responses are not supported",
    "background_options": "background responses are not supported",
    "conversation": "conversations are not supported; use previous_response_id",
    "prompt": "prompt templates are not supported",
    "max_tool_calls": "max_tool_calls is not supported",
    "top_logprobs": "top_logprobs is not supported on /v1/responses",
    "include": "include is not supported",
    "context_management": "context_management is not supported",
    "image": "image options are not supported (text only)",
    "moderation": "moderation is not supported",
    "access_programs": "access programs are not supported",
    "service_tier": None,
    "user": None,
    "safety_identifier": None,
    "prompt_cache_key": None,  # prefixes are cached automatically, whatever the key
    "prompt_cache_retention": None,
    "prompt_cache_options": None,
    "stream_options": None,
}


def _documented_extras(schema: dict[str, Any]) -> None:
    """The wire schema: a key outside it is a 400 naming it, except the no-op ones (UNSUPPORTED: None)."""
    schema["additionalProperties"] = False
    schema["properties"].update(no_op_properties(UNSUPPORTED))


class ResponseCreateRequest(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_documented_extras)
    model: str
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    stream: bool = False
    truncation: Literal["disabled", "auto"] | None = None
    parallel_tool_calls: bool = True

    def unsupported(self) -> tuple[str, str, str] | None:
        """(param, message, code) of the first parameter refused with a 400."""
        if self.truncation == "auto":
            return ("truncation", "truncation 'auto' is not supported (a context that does not fit is a 400)",
                    "unsupported_parameter")
        return refused_parameter(self.model_extra, UNSUPPORTED)


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# ---- request -> chat ----------------------------------------------------------------------------

def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content parts", param=where)
    parts = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise BadRequest(f"{where}.content[{j}]: content type {kind!r} is not supported (text only)",
                             param=f"{where}.content[{j}].type", code="unsupported_content")
        parts.append(str(p.get("text", "")))
    return "".join(parts)


def normalize_input(raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as stored items (each with an id), in OpenAI's item shapes."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    items = []
    for i, it in enumerate(raw):
        where = f"input[{i}]"
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(f"{where}.role must be user, system, developer or assistant", param=f"{where}.role")
            text = _content_text(it.get("content", ""), where)
            part = "output_text" if role == "assistant" else "input_text"
            content = [{"type": part, "text": text, **({"annotations": []} if role == "assistant" else {})}]
            items.append({"id": it.get("id") or new_item_id("msg"), "type": "message", "role": role,
                          "status": "completed", "content": content})
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(it.get(key), str):
                    raise BadRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
            items.append({"id": it.get("id") or new_item_id("fc"), "type": "function_call",
                          "call_id": it["call_id"], "name": it["name"], "arguments": it["arguments"],
                          "status": "completed"})
        elif kind == "function_call_output":
            if not isinstance(it.get("call_id"), str):
                raise BadRequest(f"{where}.call_id must be a string", param=f"{where}.call_id")
            output = it.get("output", "")
            output = output if isinstance(output, str) else _content_text(output, where + ".output")
            items.append({"id": it.get("id") or new_item_id("fco"), "type": "function_call_output",
                          "call_id": it["call_id"], "output": output, "status": "completed"})
        else:
            raise BadRequest(f"{where}: input item type {kind!r} is not supported (message, function_call "
                             "and function_call_output are)", param=f"{where}.type", code="unsupported_content")
    return items


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-completions messages for the items: function calls join the assistant turn before them,
    function call outputs become tool messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    names: dict[str, str] = {}
    for it in items:
        if it["type"] == "message":
            role = "system" if it["role"] == "developer" else it["role"]
            messages.append({"role": role, "content": "".join(p["text"] for p in it["content"])})
        elif it["type"] == "function_call":
            names[it["call_id"]] = it["name"]
            call = {"id": it["call_id"], "type": "function",
                    "function": {"name": it["name"], "arguments": it["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            msg = {"role": "tool", "tool_call_id": it["call_id"], "content": it["output"]}
            if it["call_id"] in names:
                msg["name"] = names[it["call_id"]]
            messages.append(msg)
    if not any(m["role"] != "system" for m in messages):
        raise BadRequest("input is empty: send at least one message", param="input")
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as chat-completions tools."""
    if not tools:
        return None
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            raise BadRequest(f"tools[{i}]: tool type {t.get('type')!r} is not supported (function tools only)",
                             param=f"tools[{i}].type", code="unsupported_parameter")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise BadRequest(f"tools[{i}].name is required", param=f"tools[{i}].name")
        fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
        if t.get("description"):
            fn["description"] = t["description"]
        if t.get("strict") is not None:
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "none", "required"):
            raise BadRequest("tool_choice must be auto, none, required or a function", param="tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest(f"tool_choice type {choice.get('type')!r} is not supported", param="tool_choice",
                     code="unsupported_parameter")


def text_format(text: dict[str, Any] | None) -> dict[str, Any]:
    fmt = (text or {}).get("format") or {"type": "text"}
    if fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise BadRequest(f"text.format type {fmt.get('type')!r} is not supported", param="text.format.type")
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise BadRequest("text.format.schema must be a JSON schema object", param="text.format.schema")
    return fmt


def chat_response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """Responses' text.format as a chat-completions response_format."""
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
    if fmt.get("strict") is not None:
        schema["strict"] = fmt["strict"]
    if fmt.get("description"):
        schema["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": schema}


# ---- conversation state -------------------------------------------------------------------------

def stored(session: Session, project: Project, response_id: str, param: str | None = None) -> StoredResponse:
    """A stored response of the project, or a 404 (other projects' responses do not exist for it)."""
    row = session.get(StoredResponse, response_id)
    if row is None or row.project_id != project.id:
        raise NotFound(f"Response with id '{response_id}' not found.", param=param, code="response_not_found")
    return row


def prior_context(session: Session, project: Project, previous_id: str | None) -> list[dict[str, Any]]:
    """The items a continued conversation starts from: the previous response's input and output."""
    if previous_id is None:
        return []
    prev = stored(session, project, previous_id, param="previous_response_id")
    return list(prev.context) + list(prev.output)


def save(session: Session, project: Project, body: dict[str, Any], input_items: list[dict[str, Any]],
         context: list[dict[str, Any]]) -> None:
    session.add(StoredResponse(
        id=body["id"], project_id=project.id, model=body["model"], status=body["status"],
        previous_response_id=body["previous_response_id"], instructions=body["instructions"],
        input_items=input_items, context=context, output=body["output"], usage=body["usage"], body=body,
        store=True))


def delete(session: Session, project: Project, response_id: str) -> None:
    session.delete(stored(session, project, response_id))


def input_items_page(row: StoredResponse, after: str | None, limit: int, order: str) -> dict[str, Any]:
    """The items the model saw for this response (earlier turns included), OpenAI's list shape."""
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100", param="limit")
    items = list(row.context) if order == "asc" else list(reversed(row.context))
    if after is not None:
        ids = [it["id"] for it in items]
        if after not in ids:
            raise BadRequest(f"No such item for cursor 'after': {after}", param="after")
        items = items[ids.index(after) + 1:]
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# ---- output assembly ------------------------------------------------------------------------------

def usage_obj(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """cached_tokens: input tokens the engine took from its prefix cache instead of computing them."""
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


@dataclass
class ResponseBuilder:
    """Folds generation deltas into output items and emits the Responses stream events in OpenAI's
    order, each with its sequence_number. The non-streamed path runs the same code and keeps only
    `response()`, so both paths answer the same object."""

    body: ResponseCreateRequest
    fmt: dict[str, Any]
    previous_response_id: str | None
    id: str = field(default_factory=lambda: new_item_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    output: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"
    error: dict[str, Any] | None = None
    incomplete_reason: str | None = None
    usage: dict[str, Any] | None = None
    _seq: int = 0
    _message: int | None = None  # output index of the open message item
    _calls: dict[int, int] = field(default_factory=dict)  # tool call index -> output index

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return ev

    def response(self) -> dict[str, Any]:
        b = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "completed_at": int(time.time()) if self.status == "completed" else None,
            "background": False, "error": self.error,
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": b.model,
            "output": [dict(it) for it in self.output], "parallel_tool_calls": b.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "temperature": 1.0 if b.temperature is None else b.temperature,
            "top_p": 1.0 if b.top_p is None else b.top_p,
            "tool_choice": b.tool_choice if b.tool_choice is not None else "auto",
            "tools": [{"description": None, "strict": None, **t} for t in (b.tools or [])],
            "text": {"format": self.fmt}, "truncation": "disabled", "usage": self.usage,
            "metadata": b.metadata or {}, "store": b.store, "user": None,
        }

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def text(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = self._open_message() if self._message is None else []
        item = self.output[self._message]
        item["content"][0]["text"] += delta
        events.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._message,
                                  content_index=0, delta=delta, logprobs=[]))
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        self._message = len(self.output)
        item = {"id": new_item_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                "content": []}
        self.output.append(item)
        added = self._event("response.output_item.added", output_index=self._message, item=dict(item))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item["content"] = [part]
        return [added, self._event("response.content_part.added", item_id=item["id"], output_index=self._message,
                                   content_index=0, part=dict(part))]

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[dict[str, Any]]:
        """A tool call delta (chat-completions shape: the first carries id and name)."""
        events = self._close_message("completed")
        if index not in self._calls:
            self._calls[index] = len(self.output)
            item = {"id": new_item_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": call_id or new_item_id("call"), "name": name or "", "arguments": ""}
            self.output.append(item)
            events.append(self._event("response.output_item.added", output_index=self._calls[index],
                                      item=dict(item)))
        out_index = self._calls[index]
        item = self.output[out_index]
        if name and not item["name"]:
            item["name"] = name
        if arguments:
            item["arguments"] += arguments
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=out_index, delta=arguments))
        return events

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        index, self._message = self._message, None
        item = self.output[index]
        part = item["content"][0]
        item["status"] = status
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=part["text"], logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index,
                            content_index=0, part=dict(part)),
                self._event("response.output_item.done", output_index=index, item=dict(item))]

    def finish(self, finish_reason: str, input_tokens: int, output_tokens: int,
               cached_tokens: int = 0) -> list[dict[str, Any]]:
        """`finish_reason` is the chat one: "stop", "tool_calls" or "length"."""
        incomplete = finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        events = []
        if not self.output:  # an empty reply is still an (empty) assistant message
            events += self._open_message()
        events += self._close_message(status)
        for out_index in sorted(self._calls.values()):
            item = self.output[out_index]
            item["status"] = status
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=out_index, arguments=item["arguments"], name=item["name"]))
            events.append(self._event("response.output_item.done", output_index=out_index, item=dict(item)))
        self._calls = {}
        self.status = status
        self.incomplete_reason = "max_output_tokens" if incomplete else None
        self.usage = usage_obj(input_tokens, output_tokens, cached_tokens)
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        self._message = None
        self.status = "failed"
        self.error = {"code": code, "message": message}
        return [self._event("response.failed", response=self.response())]


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


# ---- generation (the chat completions path) ---------------------------------------------------------

def _responses_param(param: str | None) -> str | None:
    """A chat-completions field name as the Responses request spells it."""
    if param is None:
        return None
    if param.startswith("response_format"):
        rest = param.removeprefix("response_format").removeprefix(".json_schema")
        return "text.format" + rest
    if param.startswith("tools[") and ".function" in param:
        return param.replace(".function", "", 1)
    return param


async def generate(hub, row, messages: list[dict[str, Any]], *, tools, tool_choice, response_format,
                   parallel_tool_calls: bool, max_tokens: int | None, temperature: float, top_p: float):
    """Start generating a chat reply through api.services.completion (the chat completions path).
    Errors before the first token (bad tools or schema, busy engine, context too long) are raised here,
    naming the Responses field."""
    from api.services.completion import start_chat

    target = await asyncio.to_thread(hub.target, row)  # reads the database, may fetch from the store
    try:
        return await start_chat(hub, target, messages, tools=tools, tool_choice=tool_choice,
                                response_format=response_format, parallel_tool_calls=parallel_tool_calls,
                                max_tokens=max_tokens, max_tokens_param="max_output_tokens",
                                temperature=temperature, top_p=top_p)
    except APIError as e:
        param = _responses_param(e.param)
        if param != e.param:
            e.message = e.message.replace(e.param, param, 1) if e.param in e.message else e.message
            e.param = param
        raise
