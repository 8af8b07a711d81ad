"""create_app(): the FastAPI application, its routers, error handlers, middleware and OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, metrics
from api.routes import health, models
from chatforge.settings import get_settings

log = logging.getLogger("chatforge.api")


async def _trim_memory(every: float) -> None:
    """Give free heap pages back to the system every `every` seconds (chatforge.malloc), off the loop."""
    from chatforge import malloc

    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(malloc.trim)


class Observe:
    """Counts and times every request (to the start of its response), tags it with an x-request-id (the
    caller's, or a new one) and logs it. Plain ASGI: a streamed response's chunks go straight to the client
    (an @app.middleware("http") function relays each one through a queue and a task of its own, which costs
    the event loop a switch per token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = Headers(scope=scope).get("x-request-id") or uuid.uuid4().hex[:16]

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - start
                method, status = scope["method"], message["status"]
                path = getattr(scope.get("route"), "path", "unmatched")  # the route's template, set by the router
                metrics.REQUESTS.labels(method, path, str(status)).inc()
                metrics.LATENCY.labels(method, path).observe(elapsed)
                MutableHeaders(scope=message)["x-request-id"] = request_id
                url_path = scope.get("root_path", "") + scope["path"]
                log.info("%s %s %s", method, url_path, status,
                         extra={"request_id": request_id, "method": method, "path": url_path, "status": status,
                                "duration_ms": round(elapsed * 1000, 1)})
            await send(message)

        await self.app(scope, receive, send_observed)


def create_app() -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        trimmer = asyncio.create_task(_trim_memory(settings.malloc_trim_seconds)) \
            if settings.malloc_trim_seconds else None
        yield
        if trimmer is not None:
            trimmer.cancel()
        pool = getattr(app.state, "engines", None)
        if pool is not None:
            pool.shutdown()

    app = FastAPI(title="ChatForge", version="0.1.0", lifespan=lifespan,
                  description="Fine-tune and serve your own chat models behind an OpenAI-compatible API.")
    errors.install(app)

    app.add_middleware(Observe)

    app.include_router(health.router)
    app.include_router(models.router, responses=errors.ERROR_RESPONSES)
    _include_optional(app)
    _document(app)
    return app


def _document(app: FastAPI) -> None:
    """The OpenAPI document as clients see the API: the key is a bearer security scheme (not a header
    parameter), and routes declare OpenAI's error shape (errors.ERROR_RESPONSES), never FastAPI's 422."""
    from fastapi.openapi.utils import get_openapi

    from chatforge.jobconfig import method_components

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {})
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "a project's API key"}}
        for ops in doc["paths"].values():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
                params = op.get("parameters", [])
                kept = [p for p in params if not (p["in"] == "header" and p["name"].lower() == "authorization")]
                if len(kept) != len(params):
                    op["security"] = [{"bearer": []}]
                    if kept:
                        op["parameters"] = kept
                    else:
                        op.pop("parameters")
        components.setdefault("schemas", {}).update(method_components())
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _include_optional(app: FastAPI) -> None:
    """Routers of later capabilities; each module exposes `router`."""
    import importlib

    for name in ("files", "uploads", "fine_tuning", "pipelines", "chat", "responses", "rewards", "evals",
                 "console"):
        try:
            mod = importlib.import_module(f"api.routes.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"api.routes.{name}":
                continue
            raise
        app.include_router(mod.router, responses=None if name == "console" else errors.ERROR_RESPONSES)
