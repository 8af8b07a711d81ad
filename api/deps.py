"""Request dependencies: a database session per request and the caller's project from the bearer key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from api.errors import Unauthorized
from chatforge.db.models import Project
from chatforge.db.session import session_factory
from chatforge.keys import authenticate
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


def get_project(session: SessionDep, settings: SettingsDep,
                authorization: Annotated[str | None, Header()] = None) -> Project:
    if not authorization:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key")
    project = authenticate(session, key.strip(), settings.api_key)
    if project is None:
        raise Unauthorized("Incorrect or revoked API key provided.", code="invalid_api_key")
    return project


ProjectDep = Annotated[Project, Depends(get_project)]
