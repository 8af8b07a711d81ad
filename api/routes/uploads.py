"""/v1/uploads: OpenAI's Uploads API, for files larger than one request should carry.

create (declares bytes, filename, purpose) -> add parts (each streamed to storage as it arrives, never
held in memory) -> complete (parts concatenated in the given order into a File, validated like a
/v1/files upload) or cancel. A pending upload can be completed any time before it expires
(settings.upload_expiry_seconds, one hour by default); cancelled and expired uploads lose their parts,
both the rows and the bytes (expired ones on access or by the worker's janitor).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import BadRequest, NotFound, TooLarge
from api.routes.files import PURPOSES, accept_file, file_object, printable, sanitize_filename
from chatforge.db.models import Project, Upload, UploadPart, new_id, utcnow
from chatforge.storage import Storage
from chatforge.storage import TooLarge as StorageTooLarge

router = APIRouter(prefix="/v1", tags=["uploads"])

MAX_PART_BYTES = 64 * 1024 * 1024  # OpenAI's limit per part


def upload_object(u: Upload, file_row=None) -> dict:
    return {
        "id": u.id,
        "object": "upload",
        "bytes": u.bytes,
        "created_at": int(u.created_at.timestamp()),
        "expires_at": int(u.expires_at.timestamp()),
        "filename": u.filename,
        "purpose": u.purpose,
        "status": u.status,
        "file": file_object(file_row) if file_row is not None else None,
    }


def _drop_parts(session: Session, storage: Storage, u: Upload) -> None:
    for part in session.scalars(select(UploadPart).where(UploadPart.upload_id == u.id)):
        session.delete(part)
    storage.delete(f"uploads/{u.id}")


def _owned(session: Session, storage: Storage, project: Project, upload_id: str) -> Upload:
    u = session.get(Upload, upload_id)
    if u is None or u.project_id != project.id:
        raise NotFound(f"No such Upload object: {upload_id}", param="upload_id", code="upload_not_found")
    if u.status == "pending" and u.expires_at < utcnow():  # expired on access
        u.status = "expired"
        _drop_parts(session, storage, u)
        session.commit()  # kept even when this request then fails (an expired upload accepts nothing)
    return u


def _pending(u: Upload) -> None:
    if u.status != "pending":
        raise BadRequest(f"Upload {u.id} is {u.status}; only a pending upload accepts this", param="upload_id",
                         code="upload_not_pending")


class CreateUpload(BaseModel):
    bytes: int = Field(ge=1)
    filename: str
    mime_type: str = ""
    purpose: str = "fine-tune"
    expires_after: dict | None = None  # {"anchor": "created_at", "seconds": N}


@router.post("/uploads")
def create_upload(body: CreateUpload, session: SessionDep, project: ProjectDep, settings: SettingsDep) -> dict:
    if body.purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}, got {body.purpose!r}", param="purpose")
    if body.bytes > settings.max_chunked_upload_bytes:
        raise TooLarge(f"upload of {body.bytes} bytes exceeds the limit of {settings.max_chunked_upload_bytes} "
                       "bytes", param="bytes", code="file_too_large")
    seconds = settings.upload_expiry_seconds
    if body.expires_after and isinstance(body.expires_after.get("seconds"), int):
        seconds = max(60, min(body.expires_after["seconds"], 30 * 86400))
    now = utcnow()
    u = Upload(id=new_id("upload_"), project_id=project.id, filename=sanitize_filename(body.filename),
               purpose=body.purpose, mime_type=printable(body.mime_type)[:255], bytes=body.bytes, status="pending",
               created_at=now, expires_at=now + timedelta(seconds=seconds))
    session.add(u)
    session.flush()
    return upload_object(u)


@router.get("/uploads/{upload_id}")
def retrieve_upload(upload_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> dict:
    from chatforge.db.models import StoredFile

    u = _owned(session, storage, project, upload_id)
    return upload_object(u, session.get(StoredFile, u.file_id) if u.file_id else None)


@router.post("/uploads/{upload_id}/parts")
def add_part(upload_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep,
             data: Annotated[UploadFile, File(description="the bytes of this part (at most 64 MB)")]) -> dict:
    u = _owned(session, storage, project, upload_id)
    _pending(u)
    part_id = new_id("part_")
    try:
        n = storage.put_stream(f"uploads/{u.id}/{part_id}", data.file, max_bytes=MAX_PART_BYTES)
    except StorageTooLarge:
        raise TooLarge(f"a part may hold at most {MAX_PART_BYTES} bytes", param="data",
                       code="part_too_large") from None
    part = UploadPart(id=part_id, upload_id=u.id, bytes=n)
    session.add(part)
    session.flush()
    return {"id": part.id, "object": "upload.part", "created_at": int(part.created_at.timestamp()),
            "upload_id": u.id}


class _Chain:
    """The parts read one after another as one stream (for Storage.put_stream)."""

    def __init__(self, storage: Storage, keys: list[str]):
        self.storage, self.keys, self.current = storage, list(keys), None

    def read(self, n: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.keys:
                    return b""
                self.current = self.storage.open(self.keys.pop(0))
            chunk = self.current.read(n)
            if chunk:
                return chunk
            self.current.close()
            self.current = None


class CompleteUpload(BaseModel):
    part_ids: list[str]
    md5: str | None = None


@router.post("/uploads/{upload_id}/complete")
def complete_upload(upload_id: str, body: CompleteUpload, session: SessionDep, project: ProjectDep,
                    storage: StorageDep, settings: SettingsDep) -> dict:
    u = _owned(session, storage, project, upload_id)
    _pending(u)
    parts = {p.id: p for p in session.scalars(select(UploadPart).where(UploadPart.upload_id == u.id))}
    unknown = [p for p in body.part_ids if p not in parts]
    if unknown or len(set(body.part_ids)) != len(body.part_ids) or not body.part_ids:
        raise BadRequest(f"part_ids must list this upload's parts once each; unknown: {', '.join(unknown) or '-'}",
                         param="part_ids")
    total = sum(parts[p].bytes for p in body.part_ids)
    if total != u.bytes:
        raise BadRequest(f"the parts hold {total} bytes but the upload declared {u.bytes}", param="part_ids",
                         code="upload_size_mismatch")
    file_id = new_id("file-")
    raw_key = f"files/{file_id}/raw"
    stream = _Chain(storage, [f"uploads/{u.id}/{p}" for p in body.part_ids])
    try:
        nbytes = storage.put_stream(raw_key, stream, max_bytes=settings.max_chunked_upload_bytes)
        if body.md5:
            _check_md5(storage, raw_key, body.md5)
        row = accept_file(session, storage, settings, project, file_id, raw_key, u.filename, u.purpose, None,
                          nbytes)
    except StorageTooLarge as e:
        storage.delete(f"files/{file_id}")
        raise TooLarge(f"file exceeds the upload limit of {e.limit} bytes", param="part_ids",
                       code="file_too_large") from None
    except BaseException:
        storage.delete(f"files/{file_id}")  # the parts stay: fix and complete again, or cancel
        raise
    u.status, u.file_id = "completed", file_id
    _drop_parts(session, storage, u)
    session.flush()
    return upload_object(u, row)


def _check_md5(storage: Storage, key: str, expected: str) -> None:
    import hashlib

    h = hashlib.md5(usedforsecurity=False)
    with storage.open(key) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != expected.lower():
        raise BadRequest(f"md5 mismatch: the parts hash to {h.hexdigest()}", param="md5", code="md5_mismatch")


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> dict:
    u = _owned(session, storage, project, upload_id)
    _pending(u)
    u.status = "cancelled"
    _drop_parts(session, storage, u)
    session.flush()
    return upload_object(u)
