"""/v1/files: upload (streamed, size-limited, validated and converted), list, retrieve, content,
preview, delete, and import from a dataset hub. The format work is ml.data's; this is the HTTP side.

Small uploads (settings.sync_validation_max_bytes) are validated inside the request: a bad one is a 400
naming the line. Larger ones are stored and answered at once with status "uploaded"; a worker
(workers.files) validates them and the file becomes "processed" or "error" (status_details)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import BadRequest, Conflict, NotFound, TooLarge
from api.pagination import paginate
from api.services.tokenizers import tokenizer_for
from chatforge.db.models import FineTuningJob, Project, StoredFile, new_id, utcnow
from chatforge.queue import VALIDATE_FILE, enqueue_after_commit
from chatforge.settings import Settings, get_settings
from chatforge.storage import Storage
from chatforge.storage import TooLarge as StorageTooLarge

router = APIRouter(prefix="/v1", tags=["files"])

PURPOSES = ("fine-tune", "evals")  # "evals": items for /v1/evals runs (api.services.evals)
ACTIVE_JOB_STATES = ("validating_files", "queued", "running", "paused")


def file_object(f: StoredFile, with_report: bool = True) -> dict:
    out = {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at.timestamp()),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
        "status_details": f.status_details,
        "progress": f.progress if f.status == "uploaded" else None,
        "expires_at": None,
        "format": f.format,
        "kind": f.kind,
        "n_examples": f.n_examples,
    }
    if with_report:
        out["report"] = f.report
    return out


def printable(text: str) -> str:
    """text without control, format (bidi overrides, zero-width), surrogate or unassigned characters."""
    import unicodedata

    text = unicodedata.normalize("NFC", text)
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))


def sanitize_filename(name: str | None) -> str:
    """The last path component, printable, without leading dots; "upload" when nothing is left.
    Storage keys never use it."""
    base = printable(re.split(r"[\\/]", name or "")[-1]).strip().lstrip(".").strip()
    return (base or "upload")[:255]


def owned_file(session: Session, project: Project, file_id: str, param: str = "file_id") -> StoredFile:
    f = session.get(StoredFile, file_id)
    if f is None or f.project_id != project.id:
        raise NotFound(f"No such File object: {file_id}", param=param, code="file_not_found")
    return f


def _validate_and_store(session: Session, storage: Storage, project: Project, file_id: str, raw_key: str,
                        filename: str, purpose: str, forced_format: str | None, nbytes: int,
                        max_length: int) -> StoredFile:
    from ml.data import inspect_file

    tokenizer = tokenizer_for(session, storage)
    canonical_key = f"files/{file_id}/canonical.jsonl"
    with storage.local_path(raw_key) as raw_path, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "canonical.jsonl"
        report = inspect_file(raw_path, forced_format=forced_format, tokenizer=tokenizer,
                              max_length=max_length, out_path=out)
        if not report.ok:
            raise BadRequest(f"{filename}: {report.summary()}", param="file", code="invalid_file")
        with open(out, "rb") as f:
            storage.put_stream(canonical_key, f)
    row = StoredFile(id=file_id, project_id=project.id, filename=filename, purpose=purpose, bytes=nbytes,
                     status="processed", format=report.format, kind=report.kind,
                     n_examples=report.n_examples, report=report.to_dict(max_problems=50), storage_key=raw_key,
                     canonical_key=canonical_key)
    session.add(row)
    session.flush()
    return row


def accept_file(session: Session, storage: Storage, settings: Settings, project: Project, file_id: str,
                raw_key: str, filename: str, purpose: str, forced_format: str | None, nbytes: int,
                max_length: int = 2048) -> StoredFile:
    """A stored upload becomes a file: validated now when small (400 on a bad file), else queued for a
    worker. The caller deletes files/<id> if this raises."""
    if purpose == "evals":
        from api.services.evals import store_eval_file

        return store_eval_file(session, storage, project, file_id, raw_key, filename, nbytes)
    if nbytes <= settings.sync_validation_max_bytes:
        return _validate_and_store(session, storage, project, file_id, raw_key, filename, purpose,
                                   forced_format, nbytes, max_length)
    from ml.data import check_head

    with storage.local_path(raw_key) as raw_path:  # a bounded look: hostile heads are refused now
        problem = check_head(raw_path)
    if problem is not None:
        raise BadRequest(f"{filename}: {problem}", param="file", code="invalid_file")
    row = StoredFile(id=file_id, project_id=project.id, filename=filename, purpose=purpose, bytes=nbytes,
                     status="uploaded", storage_key=raw_key, forced_format=forced_format, max_length=max_length,
                     progress=0.0, enqueued_at=utcnow())
    session.add(row)
    session.flush()
    enqueue_after_commit(session, file_id, "any", task=VALIDATE_FILE)
    return row


@router.post("/files")
def upload_file(
    request: Request,
    session: SessionDep,
    project: ProjectDep,
    storage: StorageDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL, JSON array, CSV, TSV (any gzipped), Parquet, or a "
                                                 "zipped/tarred datasets save_to_disk folder")],
    purpose: Annotated[str, Form()] = "fine-tune",
    format: Annotated[str | None, Form(description="force a format instead of detecting it")] = None,
    max_length: Annotated[int, Form(description="length used for the over-length share")] = 2048,
) -> dict:
    if purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose")
    if format is not None:
        from ml.data import FORMATS

        if format not in FORMATS:
            raise BadRequest(f"unknown format {format!r}; known: {', '.join(sorted(FORMATS))}", param="format")
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes + 1024 * 1024:
        raise TooLarge(f"upload of {declared} bytes exceeds the limit of {settings.max_upload_bytes} bytes",
                       param="file", code="file_too_large")
    file_id = new_id("file-")
    raw_key = f"files/{file_id}/raw"
    try:
        nbytes = storage.put_stream(raw_key, file.file, max_bytes=settings.max_upload_bytes)
    except StorageTooLarge as e:
        raise TooLarge(f"file exceeds the upload limit of {e.limit} bytes", param="file",
                       code="file_too_large") from None
    try:
        row = accept_file(session, storage, settings, project, file_id, raw_key, sanitize_filename(file.filename),
                          purpose, format, nbytes, max_length)
    except BaseException:
        storage.delete(f"files/{file_id}")  # a failed upload leaves nothing behind
        raise
    return file_object(row)


class ImportRequest(BaseModel):
    dataset: str = Field(description="Hugging Face dataset id, or a local dataset directory")
    split: str = "train"
    purpose: str = "fine-tune"
    format: str | None = None
    data_dir: str | None = Field(None, description="sub-folder of the dataset repository to load")
    max_examples: int | None = Field(None, ge=10)


def _check_import_path(dataset: str) -> None:
    """A dataset naming a server path must lie inside CHATFORGE_IMPORT_DIRS: an API key reads no other file."""
    path = Path(dataset).expanduser()
    if not (path.is_absolute() or dataset.startswith((".", "~")) or "\\" in dataset or path.exists()):
        return  # a hub id ("user/name")
    allowed = [Path(d).expanduser().resolve() for d in get_settings().import_dirs.split(os.pathsep) if d]
    if not any(path.resolve().is_relative_to(d) for d in allowed):
        raise BadRequest(f"{dataset!r} is a server path, and this server imports local datasets only from "
                         "CHATFORGE_IMPORT_DIRS" + (f" ({', '.join(map(str, allowed))})" if allowed else " (none set)")
                         + "; upload the file with POST /v1/files or name a hub dataset",
                         param="dataset", code="path_not_allowed")


@router.post("/files/import")
def import_dataset(body: ImportRequest, session: SessionDep, project: ProjectDep, storage: StorageDep) -> dict:
    from ml.data import DatasetSourceError, load_hub_dataset

    if body.purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    _check_import_path(body.dataset)
    file_id = new_id("file-")
    raw_key = f"files/{file_id}/raw"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "rows.jsonl"
            try:
                rows = load_hub_dataset(body.dataset, body.split, data_dir=body.data_dir)
                with open(raw, "w", encoding="utf-8") as out:  # stored as JSONL: one path for all data
                    for i, row in enumerate(rows):
                        if body.max_examples is not None and i >= body.max_examples:
                            break
                        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            except DatasetSourceError as e:
                raise BadRequest(str(e), param="dataset", code="dataset_unavailable") from None
            with open(raw, "rb") as f:
                nbytes = storage.put_stream(raw_key, f)
        name = sanitize_filename(body.dataset.replace("/", "__")) + f"-{body.split}.jsonl"
        row = _validate_and_store(session, storage, project, file_id, raw_key, name, body.purpose,
                                  body.format, nbytes, 2048)
    except BaseException:
        storage.delete(f"files/{file_id}")
        raise
    return file_object(row)


@router.get("/files")
def list_files(session: SessionDep, project: ProjectDep, after: str | None = None,
               limit: Annotated[int, Query()] = 100, order: str = "desc", purpose: str | None = None) -> dict:
    q = select(StoredFile).where(StoredFile.project_id == project.id)
    if purpose:
        q = q.where(StoredFile.purpose == purpose)
    return paginate(session, q, StoredFile, after, limit, lambda f: file_object(f, with_report=False),
                    newest_first=order != "asc")


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, session: SessionDep, project: ProjectDep) -> dict:
    return file_object(owned_file(session, project, file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep):
    f = owned_file(session, project, file_id)

    def chunks():
        with storage.open(f.storage_key) as fh:
            while chunk := fh.read(1 << 16):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Disposition": content_disposition(f.filename)})


def content_disposition(filename: str) -> str:
    """An attachment header that no file name can break: an ASCII fallback plus RFC 5987's UTF-8 form."""
    from urllib.parse import quote

    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/files/{file_id}/preview")
def file_preview(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep,
                 n: Annotated[int, Query(ge=1, le=50)] = 5, model: str | None = None) -> dict:
    from ml.data.preview import preview

    f = owned_file(session, project, file_id)
    if not f.canonical_key:
        raise BadRequest("this file has no converted examples", param="file_id")
    tokenizer = tokenizer_for(session, storage, model)
    if tokenizer is None:
        raise BadRequest("no tokenizer available to render the preview", param="model")
    with storage.local_path(f.canonical_key) as path:
        examples = preview(path, f.kind, tokenizer, n=n)
    return {"object": "list", "file_id": f.id, "format": f.format, "kind": f.kind, "data": examples}


@router.delete("/files/{file_id}")
def delete_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> dict:
    f = owned_file(session, project, file_id)
    active = session.scalars(select(FineTuningJob).where(
        FineTuningJob.project_id == project.id, FineTuningJob.status.in_(ACTIVE_JOB_STATES)))
    users = [j.id for j in active
             if f.id in (j.training_file, j.validation_file, *(j.extra_files or {}).values())]
    if users:
        raise Conflict(f"File {f.id} is still needed by job(s) {', '.join(users)}; cancel them or wait.",
                       param="file_id", code="file_in_use")
    session.delete(f)
    session.flush()
    storage.delete(f"files/{f.id}")
    return {"id": f.id, "object": "file", "deleted": True}
