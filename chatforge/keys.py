"""Projects and their API keys: keys are random, shown once, stored as SHA-256 and compared in
constant time. A key has a scope (which routes it may call), an optional expiry, its own limits (requests
per minute, concurrent inference requests) and a last-use time written at most once a minute. Projects
carry their quotas (queued jobs, storage bytes). The key in CHATFORGE_API_KEY (if any) belongs to the
project named "default", with full scope and no limits. Enforcement lives in the API (api/deps.py,
api/limits.py); this module owns the rows and the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from chatforge.db.models import ApiKey, FineTuningJob, Model, Project, StoredFile, Upload, UploadPart, utcnow

log = logging.getLogger("chatforge.keys")

DEFAULT_PROJECT = "default"
KEY_PREFIX = "cf-"
SCOPES = ("full", "read-only", "inference-only")
TOUCH_EVERY = timedelta(minutes=1)
# what an inference-only key may call: generation, scoring, its responses, and reading models
INFERENCE_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/rewards")
GENERATION_ROUTES = INFERENCE_ROUTES  # POSTs here hold one of the key's concurrent slots


class KeyExpired(Exception):
    def __init__(self, key_id: str, expired_at: datetime) -> None:
        super().__init__(f"API key {key_id} expired at {expired_at:%Y-%m-%d %H:%M:%S} UTC.")
        self.key_id, self.expired_at = key_id, expired_at


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key (None for CHATFORGE_API_KEY), its project, scope and limits."""

    key_id: str | None
    project_id: str
    project_name: str
    scope: str = "full"
    rpm: int | None = None
    max_streams: int | None = None
    max_queued_jobs: int | None = None
    max_storage_bytes: int | None = None
    last_used_at: datetime | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str, *, scope: str = "full", expires_in: timedelta | None = None,
               rpm: int | None = None, max_streams: int | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key (the only time it exists outside the caller)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    for name, value in (("rpm", rpm), ("max_streams", max_streams)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (leave it out for no limit)")
    project = get_or_create_project(session, project_name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(project_id=project.id, prefix=plaintext[:10], key_hash=hash_key(plaintext), scope=scope,
                 expires_at=utcnow() + expires_in if expires_in else None, rpm=rpm, max_streams=max_streams)
    session.add(row)
    session.flush()
    return row, plaintext


def _caller(row: ApiKey | None, project: Project) -> Caller:
    return Caller(key_id=row.id if row else None, project_id=project.id, project_name=project.name,
                  scope=row.scope if row else "full", rpm=row.rpm if row else None,
                  max_streams=row.max_streams if row else None, max_queued_jobs=project.max_queued_jobs,
                  max_storage_bytes=project.max_storage_bytes, last_used_at=row.last_used_at if row else None)


def identify(session: Session, key: str, env_key: str | None = None) -> Caller | None:
    """The caller a key stands for; None for an unknown or revoked key; KeyExpired for an expired one."""
    if env_key and hmac.compare_digest(key.encode(), env_key.encode()):
        return _caller(None, get_or_create_project(session, DEFAULT_PROJECT))
    digest = hash_key(key)
    found = session.execute(select(ApiKey, Project).join(Project).where(ApiKey.key_hash == digest)).first()
    if found is None:
        return None
    row, project = found
    if row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise KeyExpired(row.id, row.expires_at)
    return _caller(row, project)


def authenticate(session: Session, key: str, env_key: str | None = None) -> Project | None:
    """The project of a valid key (None for unknown, revoked or expired keys)."""
    try:
        caller = identify(session, key, env_key)
    except KeyExpired:
        return None
    return session.get(Project, caller.project_id) if caller else None


def touch(session: Session, caller: Caller) -> bool:
    """Record the key's use unless it was recorded within the last minute; True when a row was written."""
    now = utcnow()
    if caller.key_id is None or (caller.last_used_at is not None and now - caller.last_used_at < TOUCH_EVERY):
        return False
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - TOUCH_EVERY)
    done = session.execute(update(ApiKey).where(ApiKey.id == caller.key_id, stale).values(last_used_at=now))
    return bool(done.rowcount)


def allows(scope: str, method: str, path: str) -> bool:
    """Whether a key of this scope may call `method path` (read-only: GET; inference-only: generation,
    scoring, its responses and GET /v1/models)."""
    if scope == "full":
        return True
    reads = method in ("GET", "HEAD", "OPTIONS")
    if scope == "read-only":
        return reads
    if scope == "inference-only":
        if reads and (path == "/v1/models" or path.startswith("/v1/models/")):
            return True
        return any(path == p or path.startswith(p + "/") for p in INFERENCE_ROUTES)
    return False


def holds_slot(method: str, path: str) -> bool:
    """A request that runs on the serving engine (counts against the key's concurrent limit)."""
    return method == "POST" and path in GENERATION_ROUTES


def state(row: ApiKey, now: datetime | None = None) -> str:
    now = now or utcnow()
    if row.revoked_at is not None:
        return f"revoked {row.revoked_at:%Y-%m-%d}"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


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


def set_quotas(session: Session, project_name: str, **quotas: int | None) -> Project:
    """Set some of a project's quotas (max_queued_jobs, max_storage_bytes); None removes one."""
    project = get_or_create_project(session, project_name)
    for name, value in quotas.items():
        if name not in ("max_queued_jobs", "max_storage_bytes"):
            raise ValueError(f"unknown quota {name}")
        if value is not None and value < 0:
            raise ValueError(f"{name} must be 0 or more")
        setattr(project, name, value)
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name)))


QUEUED = ("validating_files", "queued")


def queued_jobs(session: Session, project_id: str) -> int:
    """Fine-tuning jobs of a project waiting to run (what max_queued_jobs counts)."""
    return session.scalar(select(func.count(FineTuningJob.id)).where(
        FineTuningJob.project_id == project_id, FineTuningJob.status.in_(QUEUED))) or 0


def storage_used(session: Session, project_id: str) -> int:
    """Bytes a project holds (what max_storage_bytes counts): its files, its pending uploads' parts and
    the stored folders of the models its jobs trained (final models and checkpoints), measured first
    where not yet (measure_models)."""
    measure_models(session, project_id)
    files = session.scalar(select(func.coalesce(func.sum(StoredFile.bytes), 0))
                           .where(StoredFile.project_id == project_id))
    parts = session.scalar(select(func.coalesce(func.sum(UploadPart.bytes), 0)).join(Upload)
                           .where(Upload.project_id == project_id, Upload.status == "pending"))
    models = session.scalar(select(func.coalesce(func.sum(Model.bytes), 0))
                            .where(Model.project_id == project_id))
    return int(files or 0) + int(parts or 0) + int(models or 0)


def _stored_folder(storage_key: str) -> str:
    """The folder a model's weights were stored with: a checkpoint's whole folder (its trainer state too,
    jobs/<job>/checkpoints/<name>) when the weights are a subfolder of it, else the model's own key."""
    parts = storage_key.split("/")
    if len(parts) > 4 and parts[0] == "jobs" and parts[2] == "checkpoints":
        return "/".join(parts[:4])
    return storage_key


def _folder_bytes(storage, key: str) -> int:
    return storage.size(key)  # a local folder is walked; an object store sums its manifest, downloading nothing


def measure_models(session: Session, project_id: str) -> None:
    """Record the stored size of the project's models not measured yet. A model's folder does not change
    once it is registered, so each is measured once (a walk of a local folder, or one manifest read in an
    object store) and its size kept in models.bytes, written in a session of its own so that it stays
    whatever the caller's session does. A folder already gone (being deleted) is left unmeasured."""
    unmeasured = list(session.execute(select(Model.id, Model.storage_key).where(
        Model.project_id == project_id, Model.bytes.is_(None))))
    if not unmeasured:
        return
    from chatforge.storage import get_storage

    storage = get_storage()
    sizes = {}
    for model_id, key in unmeasured:
        try:
            sizes[model_id] = _folder_bytes(storage, _stored_folder(key))
        except FileNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - an unreadable store must not turn uploads into 500s
            log.warning("could not measure the stored size of model %s (%s): %s", model_id, key, e)
    if sizes:
        try:
            with Session(bind=session.get_bind()) as own:
                for model_id, size in sizes.items():
                    own.execute(update(Model).where(Model.id == model_id, Model.bytes.is_(None))
                                .values(bytes=size))
                own.commit()
        except SQLAlchemyError as e:  # e.g. SQLite busy with the caller's write: the sizes are kept next time
            log.warning("could not record model sizes: %s", e)


_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '12h', '30d', '2w' or combinations ('1d12h'); a bare number is seconds."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 12h, 30d)")
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
        seconds = sum(int(n) * unit[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


def parse_size(text: str) -> int:
    """Bytes from '5000000', '500M', '10G', '1TiB' (K/M/G/T are powers of 1024)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 1000000, 500M, 10G)")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")
