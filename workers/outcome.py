"""A training job's inputs and outcomes, shared by the runner and the method table (workers.methods).

Owns JobContext (the job row, its start and base models, where its files and output live), the errors a
user must fix (JobInputError), and how an outcome is recorded: the fine-tuned model row and the metrics
CSV on success, paused/cancelled, or failed with a typed error.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from chatforge.basemodels import model_dir
from chatforge.db.models import FineTuningJob, JobEvent, Model, StoredFile, new_id
from chatforge.db.session import session_scope
from chatforge.jobstate import finish
from chatforge.storage import Storage, get_storage, restore_newest_folder

log = logging.getLogger("chatforge.runner")


class JobInputError(Exception):
    """Something about the job's inputs that the user must fix (becomes job.error)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class JobContext:
    job: FineTuningJob
    storage: Storage
    base: Model  # the model the job starts from
    root: Model  # its base model
    output_dir: Path
    model_name: str
    owner: str | None = None  # the lease owner this child runs for (workers.runner's argv)

    def model_path(self, m: Model) -> Path:
        return Path(model_dir(self.storage, m))

    def file_path(self, file_id: str | None) -> Path | None:
        if not file_id:
            return None
        with session_scope() as s:
            f = s.get(StoredFile, file_id)
            if f is None:
                raise JobInputError(f"file {file_id} no longer exists", param="training_file")
            key = f.canonical_key
        with self.storage.local_path(key) as p:
            return Path(p)


def fine_tuned_name(job: FineTuningJob, root: str) -> str:
    return f"ft:{root}:{job.suffix or ''}:{job.id}"


def load_context(job_id: str) -> JobContext:
    storage = get_storage()
    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        base = s.get(Model, job.model)
        if base is None:
            raise JobInputError(f"model {job.model} no longer exists", param="model", code="model_not_found")
        root = s.get(Model, base.root) or base
        s.expunge_all()
    out = storage.writable_dir(f"jobs/{job.id}")
    # an object store: this host may never have seen the run; resume from the newest published checkpoint
    restore_newest_folder(storage, f"jobs/{job.id}/checkpoints", out / "checkpoints")
    return JobContext(job, storage, base, root, out, fine_tuned_name(job, root.id))


# Leading columns of a job's metrics CSV (OpenAI's step/train_loss/valid_loss first); the rest follow.
METRICS_CSV_COLUMNS = ("step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second")


def _metrics_csv(session, job: FineTuningJob) -> StoredFile | None:
    rows = [e.data for e in session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq))]
    if not rows:
        return None
    by_step: dict[int, dict] = {}  # one row per step (a final evaluation reports again at the last step)
    for r in rows:
        by_step.setdefault(r.get("step", 0), {}).update(r)
    keys = [k for k in METRICS_CSV_COLUMNS if any(k in r for r in by_step.values())]
    for r in by_step.values():
        keys += [k for k in r if k not in keys and k != "total_steps" and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for step in sorted(by_step):
        w.writerow(by_step[step])
    data = buf.getvalue().encode()
    file_id = new_id("file-")
    key = f"files/{file_id}/raw"
    get_storage().put_stream(key, io.BytesIO(data))
    f = StoredFile(id=file_id, project_id=job.project_id, filename=f"{job.id}-metrics.csv",
                   purpose="fine-tune-results", bytes=len(data), status="processed", format="csv",
                   storage_key=key)
    session.add(f)
    return f


def owned_job(session, job_id: str, owner: str | None) -> FineTuningJob | None:
    """The job, locked, if it still runs under `owner` (None: any owner); else None. An outcome is recorded
    only by the child that owns the job: after an outage longer than the lease the job may have been
    requeued or taken by another worker, and a user's cancel or another outcome must not be overwritten."""
    job = session.get(FineTuningJob, job_id, with_for_update=True)
    if job is None or job.status != "running" or (owner is not None and job.lease_owner != owner):
        if job is not None:
            log.warning("not recording an outcome for %s: it is %s under %s, not running under %s",
                        job_id, job.status, job.lease_owner, owner)
        return None
    return job


def record_success(ctx: JobContext, *, kind: str, folder_key: str, is_adapter: bool, trained_tokens: int | None,
                   result: dict, settings: dict | None = None) -> None:
    with session_scope() as s:
        if owned_job(s, ctx.job.id, ctx.owner) is None:
            return
    # publish the trained folder (a no-op where output_dir already is the stored folder)
    ctx.storage.put_dir(folder_key, ctx.output_dir / folder_key.removeprefix(f"jobs/{ctx.job.id}/"))
    with session_scope() as s:
        job = owned_job(s, ctx.job.id, ctx.owner)
        if job is None:
            return
        m = s.get(Model, ctx.model_name)
        if m is None:
            s.add(Model(id=ctx.model_name, project_id=job.project_id, kind=kind, parent=job.model,
                        root=ctx.root.id, storage_key=folder_key, is_adapter=is_adapter, job_id=job.id,
                        step=job.step, settings=settings or {}))
        job.fine_tuned_model = ctx.model_name
        if trained_tokens is not None:
            job.trained_tokens = trained_tokens
        job.result = result
        s.flush()
        csv_file = _metrics_csv(s, job)
        job.result_files = [csv_file.id] if csv_file else []
        finish(s, job, "succeeded", message=f"The job has successfully completed: {ctx.model_name}")


def record_stopped(job_id: str, status: str, step: int, owner: str | None = None) -> None:
    with session_scope() as s:
        job = owned_job(s, job_id, owner)
        if job is None:  # cancelled, requeued or taken over meanwhile: theirs to record
            return
        if status == "paused":
            finish(s, job, "paused", message=f"Job paused at step {step}; resume continues from the checkpoint.")
        else:
            finish(s, job, "cancelled", message=f"Job cancelled at step {step}.")


def fail(job_id: str, message: str, code: str, param: str | None = None, owner: str | None = None) -> None:
    with session_scope() as s:
        job = owned_job(s, job_id, owner)
        if job is None:
            return
        finish(s, job, "failed", error={"code": code, "message": message, "param": param},
               message=f"Job failed: {message}")
