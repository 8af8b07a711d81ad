"""Request dependencies: a database session per request, and the caller from the bearer key with the key's
scope, expiry and limits enforced (requests per minute, concurrent inference requests) and the project's
quotas checked (queued jobs, storage bytes) before a route runs. The rules are chatforge.keys; the counters
api.limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import Forbidden, QuotaExceeded, RateLimited, Unauthorized
from api.limits import get_limiter
from chatforge.db.models import Project
from chatforge.db.session import session_factory
from chatforge.keys import Caller, KeyExpired, allows, holds_slot, identify, queued_jobs, storage_used, touch
from chatforge.settings import Settings, get_settings
from chatforge.storage import Storage, get_storage


def get_session() -> Iterator[Session]:
    s = session_factory()()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]  # commit before responding
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key")
    return key.strip()


def _adds_jobs(method: str, path: str) -> bool:
    return method == "POST" and (path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/pipelines")
                                 or (path.startswith("/v1/fine_tuning/jobs/") and path.endswith("/resume")))


def _adds_bytes(method: str, path: str) -> bool:
    return method == "POST" and (path in ("/v1/files", "/v1/files/import", "/v1/uploads")
                                 or (path.startswith("/v1/uploads/") and path.endswith("/parts")))


def _check_quotas(session: Session, caller: Caller, request: Request) -> None:
    method, path = request.method, request.url.path
    if caller.max_queued_jobs is not None and _adds_jobs(method, path):
        queued = queued_jobs(session, caller.project_id)
        if queued >= caller.max_queued_jobs:
            raise QuotaExceeded(
                f"Project '{caller.project_name}' has {queued} queued job(s), its quota (max_queued_jobs "
                f"{caller.max_queued_jobs}); wait for one to start or cancel one.", retry_after=30)
    if caller.max_storage_bytes is not None and _adds_bytes(method, path):
        used = storage_used(session, caller.project_id)
        try:
            incoming = max(int(request.headers.get("content-length") or 0), 1)
        except ValueError:
            incoming = 1
        if used + incoming > caller.max_storage_bytes:
            raise QuotaExceeded(
                f"Project '{caller.project_name}' stores {used} bytes; this request would pass its quota "
                f"(max_storage_bytes {caller.max_storage_bytes}). Delete files or fine-tuned models to make room.",
                retry=False)


def get_caller(request: Request, settings: SettingsDep,
               authorization: Annotated[str | None, Header()] = None) -> Iterator[Caller]:
    """The authenticated caller; holds one of the key's concurrent slots until the response is sent."""
    key = _bearer(authorization)
    method, path = request.method, request.url.path
    s = session_factory()()
    try:
        try:
            caller = identify(s, key, settings.api_key)
        except KeyExpired as e:
            raise Unauthorized(f"{e} Ask an administrator for a new key.", code="expired_api_key") from None
        if caller is None:
            raise Unauthorized("Incorrect or revoked API key provided.", code="invalid_api_key")
        if not allows(caller.scope, method, path):
            raise Forbidden(f"This key is {caller.scope}: it may not call {method} {path}.",
                            code="insufficient_scope")
        if caller.key_id is None or touch(s, caller):
            s.commit()  # the last use, or the default project CHATFORGE_API_KEY may just have created
        limiter = get_limiter(settings.celery_broker_url)
        if caller.rpm is not None and caller.key_id is not None:
            wait = limiter.hit(caller.key_id, caller.rpm)
            if wait is not None:
                raise RateLimited(f"Rate limit reached for this key: {caller.rpm} requests per minute. "
                                  f"Try again in {wait} s.", retry_after=wait)
        _check_quotas(s, caller, request)
    finally:
        s.close()
    token = None
    if caller.max_streams is not None and caller.key_id is not None and holds_slot(method, path):
        token = limiter.acquire(caller.key_id, caller.max_streams)
        if token is None:
            raise RateLimited(f"This key already has {caller.max_streams} inference request(s) running, its "
                              "limit of concurrent requests; try again when one finishes.", retry_after=1)
    try:
        yield caller
    finally:
        if token is not None:
            limiter.release(caller.key_id, token)


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_project(session: SessionDep, caller: CallerDep) -> Project:
    project = session.get(Project, caller.project_id)
    if project is None:  # deleted between the two sessions
        raise Unauthorized("Incorrect or revoked API key provided.", code="invalid_api_key")
    return project


ProjectDep = Annotated[Project, Depends(get_project)]
