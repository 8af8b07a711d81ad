"""Background work on uploaded files: validating large uploads, releasing the jobs that wait on them,
and deleting the parts of abandoned chunked uploads.

validate_file is safe to deliver twice: it claims the file with one conditional UPDATE (status
"uploaded" and no live lease) and renews the lease while it reads. A worker busy training (its pool
runs one task at a time) still validates files: its janitor thread claims any file left unclaimed for
a few seconds and validates it beside the training child. If a worker dies mid-file, the lease lapses
and another worker's janitor claims the file again; after max_job_attempts such crashes the file
becomes "error". A file ends "processed" (canonical JSONL stored) or "error" with
status_details naming the line and field; jobs created on it meanwhile (status validating_files)
are then queued, or failed with that message.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from celery import signals
from sqlalchemy import or_, select, update

from chatforge.db.models import FineTuningJob, StoredFile, Upload, UploadPart, utcnow
from chatforge.db.session import session_scope
from chatforge.jobconfig import METHOD_KINDS
from chatforge.jobstate import add_event, finish
from chatforge.queue import VALIDATE_FILE, enqueue_after_commit, get_celery
from chatforge.settings import Settings, get_settings
from chatforge.storage import get_storage

app = get_celery()
log = logging.getLogger("chatforge.files")


@app.task(name=VALIDATE_FILE, acks_late=True)
def validate_file(file_id: str) -> str:
    return process_file(file_id, get_settings())


def _claim(file_id: str, settings: Settings) -> bool:
    now = utcnow()
    with session_scope() as s:
        res = s.execute(
            update(StoredFile)
            .where(StoredFile.id == file_id, StoredFile.status == "uploaded",
                   or_(StoredFile.lease_expires_at.is_(None), StoredFile.lease_expires_at < now))
            .values(lease_expires_at=now + timedelta(seconds=settings.file_validation_lease_seconds),
                    attempts=StoredFile.attempts + 1, progress=0.0)
        )
        return res.rowcount == 1


def _tokenizer(session, storage):
    from chatforge.basemodels import model_dir
    from chatforge.db.models import Model

    row = session.get(Model, get_settings().default_base_model)
    if row is None:
        return None
    path = Path(model_dir(storage, row))
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        return None
    return str(path)


def process_file(file_id: str, settings: Settings) -> str:
    from ml.data import inspect_file

    if not _claim(file_id, settings):
        return "skipped"
    storage = get_storage()
    with session_scope() as s:
        f = s.get(StoredFile, file_id)
        raw_key, forced, max_length, filename = f.storage_key, f.forced_format, f.max_length or 2048, f.filename
        tokenizer = _tokenizer(s, storage)
    last = [0.0]

    def progress(fraction: float) -> None:  # at most once a second: a row update that renews the lease
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        last[0] = now
        with session_scope() as s:
            s.execute(update(StoredFile).where(StoredFile.id == file_id).values(
                progress=round(min(fraction, 0.99), 3),
                lease_expires_at=utcnow() + timedelta(seconds=settings.file_validation_lease_seconds)))

    canonical_key = f"files/{file_id}/canonical.jsonl"
    with storage.local_path(raw_key) as raw_path, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "canonical.jsonl"
        report = inspect_file(raw_path, forced_format=forced, tokenizer=tokenizer, max_length=max_length,
                              out_path=out, progress=progress)
        if report.ok:
            with open(out, "rb") as fh:
                storage.put_stream(canonical_key, fh)
    with session_scope() as s:
        f = s.get(StoredFile, file_id)
        f.report = report.to_dict(max_problems=50)
        f.lease_expires_at = None
        f.format, f.kind = report.format, report.kind
        if report.ok:
            f.status, f.progress, f.n_examples, f.canonical_key = "processed", 1.0, report.n_examples, canonical_key
        else:
            f.status, f.status_details = "error", f"{filename}: {report.summary()}"
        s.flush()
        release_jobs(s, [file_id])
    log.info("file %s: %s", file_id, "processed" if report.ok else "error")
    return "processed" if report.ok else "error"


def release_jobs(session, file_ids: list[str] | None = None) -> int:
    """Jobs in validating_files whose files are all settled: queue them, or fail them with the file's
    error (or a kind mismatch). file_ids: only jobs using these files (None: every waiting job)."""
    jobs = session.scalars(select(FineTuningJob).where(FineTuningJob.status == "validating_files")
                           .with_for_update(skip_locked=True)).all()
    done = 0
    for job in jobs:
        params = [("training_file", job.training_file), ("validation_file", job.validation_file)]
        params = [(p, fid) for p, fid in params if fid]
        if file_ids is not None and not any(fid in file_ids for _, fid in params):
            continue
        files = {p: session.get(StoredFile, fid) for p, fid in params}
        if any(f is not None and f.status == "uploaded" for f in files.values()):
            continue
        error = _job_file_error(job, files)
        if error is not None:
            finish(session, job, "failed", error=error, message=f"File validation failed: {error['message']}")
        else:
            train = files["training_file"]
            add_event(session, job.id, f"Files validated: {train.n_examples} training examples ({train.format})",
                      data={"training_examples": train.n_examples})
            job.status, job.enqueued_at = "queued", utcnow()
            add_event(session, job.id, f"Job queued: {job.method.get('type')} on {job.model}")
            enqueue_after_commit(session, job.id, job.requires)
        done += 1
    return done


def _job_file_error(job: FineTuningJob, files: dict) -> dict | None:
    kind = METHOD_KINDS.get((job.method or {}).get("type", "supervised"))
    for param, f in files.items():
        if f is None:
            return {"code": "file_not_found", "message": f"{param} was deleted", "param": param}
        if f.status == "error":
            return {"code": "invalid_file", "message": f.status_details or "the file is invalid", "param": param}
        if kind is not None and f.kind != kind:
            return {"code": "wrong_file_kind", "param": param,
                    "message": f"{param} {f.id} holds {f.kind} data ({f.format}) but this method needs {kind} data"}
    return None


# -- the janitor: lost validations, waiting jobs, expired uploads ----------------------------------------


UNCLAIMED_GRACE_S = 5  # a free worker takes the Celery task at once; a busy one's janitor after this


def claimable(settings: Settings) -> list[str]:
    """Files waiting for validation that no live worker holds: never claimed for a few seconds (every
    worker busy), or whose lease lapsed (their worker died). Too many crashes: the file is an error."""
    now = utcnow()
    out: list[str] = []
    with session_scope() as s:
        rows = s.scalars(select(StoredFile).where(
            StoredFile.status == "uploaded",
            or_(StoredFile.lease_expires_at < now,
                StoredFile.lease_expires_at.is_(None)
                & or_(StoredFile.enqueued_at.is_(None),
                      StoredFile.enqueued_at < now - timedelta(seconds=UNCLAIMED_GRACE_S))),
        ).order_by(StoredFile.created_at).with_for_update(skip_locked=True))
        for f in rows:
            if f.attempts >= settings.max_job_attempts:
                f.status, f.lease_expires_at = "error", None
                f.status_details = f"validation stopped {f.attempts} times (its worker died); upload the file again"
                continue
            out.append(f.id)
    return out


_validator: threading.Thread | None = None


def _validate_waiting(settings: Settings) -> None:
    while not _stop.is_set():
        ids = claimable(settings)
        if not ids:
            return
        for file_id in ids:
            try:
                process_file(file_id, settings)  # skipped if another worker claimed it meanwhile
            except Exception:
                log.exception("validating %s failed; its lease will lapse and it is tried again", file_id)


def janitor_once(settings: Settings, background: bool = True) -> dict:
    """Start validating unclaimed files (in a thread, so training and this loop go on), release the jobs
    waiting on settled files, expire abandoned uploads."""
    global _validator
    waiting = claimable(settings)
    if waiting and (_validator is None or not _validator.is_alive()):
        if background:
            _validator = threading.Thread(target=_validate_waiting, args=(settings,), name="file-validator",
                                          daemon=True)
            _validator.start()
        else:
            _validate_waiting(settings)
    with session_scope() as s:
        released = release_jobs(s)
    expired = expire_uploads(settings)
    return {"waiting": waiting, "released": released, "expired": expired}


def expire_uploads(settings: Settings) -> list[str]:
    """Pending uploads past expires_at become expired; their parts are deleted (rows and bytes)."""
    storage = get_storage()
    with session_scope() as s:
        gone = s.scalars(select(Upload).where(Upload.status == "pending", Upload.expires_at < utcnow())
                         .with_for_update(skip_locked=True)).all()
        ids = [u.id for u in gone]
        for u in gone:
            u.status = "expired"
        if ids:
            for part in s.scalars(select(UploadPart).where(UploadPart.upload_id.in_(ids))):
                s.delete(part)
    for upload_id in ids:
        storage.delete(f"uploads/{upload_id}")
    return ids


_stop = threading.Event()


def _janitor_forever(settings: Settings) -> None:
    while not _stop.is_set():
        try:
            janitor_once(settings)
        except Exception:
            log.exception("file janitor pass failed")
        _stop.wait(settings.reconcile_interval_seconds)


@signals.worker_ready.connect
def _start_janitor(sender=None, **_):
    threading.Thread(target=_janitor_forever, args=(get_settings(),), name="file-janitor", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_janitor(**_):
    _stop.set()
