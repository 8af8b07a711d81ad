"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the right status, so the
openai SDK raises its typed exceptions. Routers raise these; they never build error bodies by hand."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        if status is not None:
            self.status = status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str] | None:
        return None


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class Conflict(APIError):
    status = 409
    type = "conflict_error"


class Forbidden(APIError):
    status = 403
    type = "permission_error"


class TooLarge(APIError):
    status = 413


class RateLimited(APIError):
    """429 with Retry-After (seconds); OpenAI's code rate_limit_exceeded unless told otherwise."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = "rate_limit_exceeded",
                 param: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code, param=param, status=status)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class QuotaExceeded(RateLimited):
    """A project quota is used up (OpenAI's insufficient_quota); with retry=False clients are told not to
    retry (x-should-retry, which the openai SDKs honour) because waiting frees nothing."""

    type = "insufficient_quota"

    def __init__(self, message: str, *, retry_after: int = 60, retry: bool = True,
                 param: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code="insufficient_quota", param=param)
        self.retry = retry

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after), "x-should-retry": "true" if self.retry else "false"}


class Unavailable(APIError):
    status = 503
    type = "service_unavailable"


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid request")
        if msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        message = f"{param}: {msg}" if param else msg
        if len(errs) > 1:
            message += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
        return JSONResponse(BadRequest(message, param=param, code="invalid_value").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        cls = {401: Unauthorized, 404: NotFound, 409: Conflict, 413: TooLarge, 429: RateLimited}.get(
            exc.status_code, APIError)
        err = cls(str(exc.detail), status=exc.status_code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        import logging

        logging.getLogger("chatforge.api").exception("unhandled error")
        return JSONResponse(APIError("internal server error", code="internal_error").body(), status_code=500)
