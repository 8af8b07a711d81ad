"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the right status, so the
openai SDK raises its typed exceptions. Routers raise these; they never build error bodies by hand.
Also the error schema and statuses the OpenAPI document declares for every /v1 route (api.main)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

# The error type a plain APIError gets from its status (subclasses name theirs); 5xx are server errors.
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                   409: "conflict_error", 429: "rate_limit_error"}


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        if status is not None:
            self.status = status
        if self.type == APIError.type and self.status != 400:
            self.type = "server_error" if self.status >= 500 else _TYPE_BY_STATUS.get(self.status, self.type)

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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": what} for status, what in (
        (400, "Invalid request: the param names the field"), (401, "Missing, invalid or expired API key"),
        (403, "The key's scope does not allow this route"), (404, "No such object in this project"),
        (409, "The object's state does not allow this"), (413, "The body or file is too large"),
        (429, "Rate limit or project quota reached (Retry-After says when to retry)"),
        (500, "Server error"), (503, "The service cannot serve this now"))}
"""Every error a /v1 route may answer, in OpenAI's error shape (validation errors are 400, never 422)."""


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
        err = APIError(str(exc.detail), status=exc.status_code)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    @app.exception_handler(UnicodeEncodeError)
    async def _unstorable(_: Request, exc: Exception):
        # Text with NUL characters or unpaired surrogates (valid JSON, not storable text), numbers out of a
        # column's range: the database refuses the request's data, so it is the request that is invalid.
        message = ("the request holds a value the server cannot store or look up: text with a NUL character "
                   "or an unpaired UTF-16 surrogate, or a number out of range")
        return JSONResponse(BadRequest(message, code="invalid_value").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        import logging

        logging.getLogger("chatforge.api").exception("unhandled error")
        return JSONResponse(APIError("internal server error", code="internal_error", status=500).body(),
                            status_code=500)
