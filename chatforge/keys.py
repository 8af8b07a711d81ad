"""Projects and their API keys: keys are random, shown once, stored as SHA-256 and compared in
constant time. The key in CHATFORGE_API_KEY (if any) belongs to the project named "default"."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatforge.db.models import ApiKey, Project, utcnow

DEFAULT_PROJECT = "default"
KEY_PREFIX = "cf-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key (the only time it exists outside the caller)."""
    project = get_or_create_project(session, project_name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(project_id=project.id, prefix=plaintext[:10], key_hash=hash_key(plaintext))
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, key: str, env_key: str | None = None) -> Project | None:
    if env_key and hmac.compare_digest(key.encode(), env_key.encode()):
        return get_or_create_project(session, DEFAULT_PROJECT)
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.project


def list_keys(session: Session) -> list[tuple[ApiKey, Project]]:
    return list(session.execute(select(ApiKey, Project).join(Project).order_by(ApiKey.created_at)).tuples())


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id_or_prefix) or session.scalar(
        select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)
    )
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def any_keys(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None
