"""/v1/fine_tuning/jobs: OpenAI's job API (create, list, retrieve, cancel, events, checkpoints) plus
pause/resume and a live SSE event stream. The work happens in api.services.jobs and the workers."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from api.deps import ProjectDep, SessionDep
from api.errors import Conflict
from api.pagination import paginate
from api.services import jobs as svc
from chatforge.db.models import Checkpoint, FineTuningJob, JobEvent, utcnow
from chatforge.db.session import session_scope
from chatforge.jobconfig import schema_ref
from chatforge.jobstate import add_event
from chatforge.queue import enqueue_after_commit

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])
TERMINAL = ("succeeded", "failed", "cancelled")


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: dict[str, Any] | None = None
    method: Annotated[dict[str, Any] | None, WithJsonSchema(schema_ref(nullable=True))] = None
    hyperparameters: dict[str, Any] | None = None
    integrations: list[Any] | None = None
    device: str | None = Field(None, description='"cuda" to require a GPU worker; default any worker')
    num_processes: int | None = Field(None, ge=1, le=64, description=(
        "training processes (one per GPU; on CPU, gloo ranks); default: every GPU of the worker, or 1. "
        "Supervised jobs only"))


def job_object(j: FineTuningJob) -> dict:
    mtype = (j.method or {}).get("type", "supervised")
    hp = ((j.method or {}).get(mtype) or {}).get("hyperparameters", {})
    return {
        "id": j.id,
        "object": "fine_tuning.job",
        "created_at": int(j.created_at.timestamp()),
        "finished_at": int(j.finished_at.timestamp()) if j.finished_at else None,
        "model": j.model,
        "fine_tuned_model": j.fine_tuned_model,
        "organization_id": j.project_id,
        "status": j.status,
        "hyperparameters": {k: v for k, v in hp.items() if k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "method": j.method,
        "training_file": j.training_file,
        "validation_file": j.validation_file,
        "result_files": list(j.result_files or []),
        "trained_tokens": j.trained_tokens,
        "error": j.error,
        "user_provided_suffix": j.suffix,
        "seed": j.seed,
        "estimated_finish": int(j.estimated_finish.timestamp()) if j.estimated_finish else None,
        "integrations": [],
        "metadata": j.user_metadata,
        # ChatForge additions
        "step": j.step,
        "total_steps": j.total_steps,
        "attempts": j.attempts,
        "num_processes": j.num_processes,
        "requested": j.requested,
        "result": j.result,
        "pipeline_id": j.pipeline_id,
        "extra_files": j.extra_files,
    }


def event_object(e: JobEvent) -> dict:
    return {"id": e.public_id, "object": "fine_tuning.job.event", "created_at": int(e.created_at.timestamp()),
            "level": e.level, "message": e.message, "type": e.type, "data": e.data}


def checkpoint_object(c: Checkpoint) -> dict:
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": int(c.created_at.timestamp()),
            "fine_tuned_model_checkpoint": c.model_id, "fine_tuning_job_id": c.job_id,
            "metrics": {"step": c.step, **(c.metrics or {})}, "step_number": c.step}


@router.post("/jobs")
def create_job(body: CreateJob, session: SessionDep, project: ProjectDep) -> dict:
    job = svc.create_job(session, project, body.model_dump())
    return job_object(job)


@router.get("/jobs")
def list_jobs(request: Request, session: SessionDep, project: ProjectDep, after: str | None = None,
              limit: Annotated[int, Query()] = 20) -> dict:
    q = select(FineTuningJob).where(FineTuningJob.project_id == project.id)
    meta = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")}
    if meta:  # JSON filtering differs per database; filter the project's jobs in Python
        ids = [j.id for j in session.scalars(q) if all((j.user_metadata or {}).get(k) == v for k, v in meta.items())]
        q = q.where(FineTuningJob.id.in_(ids))
    return paginate(session, q, FineTuningJob, after, limit, job_object)


@router.get("/jobs/{job_id}")
def retrieve_job(job_id: str, session: SessionDep, project: ProjectDep) -> dict:
    return job_object(svc.owned_job(session, project, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, project: ProjectDep) -> dict:
    job = svc.owned_job(session, project, job_id)
    if job.status in TERMINAL:
        raise Conflict(f"Job {job_id} has already {job.status}; it cannot be cancelled.", param="fine_tuning_job_id")
    if job.status == "running":
        job.requested = "cancel"
        add_event(session, job.id, "Cancellation requested; stopping after the current step.")
    else:
        job.status, job.finished_at, job.requested = "cancelled", utcnow(), None
        add_event(session, job.id, "Job cancelled.")
    return job_object(job)


@router.post("/jobs/{job_id}/pause")
def pause_job(job_id: str, session: SessionDep, project: ProjectDep) -> dict:
    job = svc.owned_job(session, project, job_id)
    if job.status == "running":
        job.requested = "pause"
        add_event(session, job.id, "Pause requested; saving a checkpoint after the current step.")
    elif job.status in ("queued", "validating_files"):
        job.status = "paused"
        add_event(session, job.id, "Job paused before it started.")
    else:
        raise Conflict(f"Job {job_id} is {job.status}; only queued or running jobs can be paused.",
                       param="fine_tuning_job_id")
    return job_object(job)


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, session: SessionDep, project: ProjectDep) -> dict:
    job = svc.owned_job(session, project, job_id)
    if job.status != "paused":
        raise Conflict(f"Job {job_id} is {job.status}; only paused jobs can be resumed.", param="fine_tuning_job_id")
    job.status, job.requested, job.enqueued_at = "queued", None, utcnow()
    job.attempts = 0
    add_event(session, job.id, "Job resumed; it continues from its last checkpoint.")
    enqueue_after_commit(session, job.id, job.requires)
    return job_object(job)


def _event_seq(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(cursor.removeprefix("ftevent-"))
    except ValueError:
        from api.errors import BadRequest

        raise BadRequest(f"invalid event cursor {cursor!r}", param="after") from None


@router.get("/jobs/{job_id}/events")
def list_events(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 20, stream: bool = False,
                order: str = "desc"):
    job = svc.owned_job(session, project, job_id)
    seq = _event_seq(after)
    if stream:
        return EventSourceResponse(_stream_events(job.id, seq), ping=10)
    q = select(JobEvent).where(JobEvent.job_id == job.id)
    if order == "asc":
        if seq is not None:
            q = q.where(JobEvent.seq > seq)
        q = q.order_by(JobEvent.seq)
    else:  # OpenAI: newest first; `after` pages towards older events
        if seq is not None:
            q = q.where(JobEvent.seq < seq)
        q = q.order_by(JobEvent.seq.desc())
    rows = list(session.scalars(q.limit(limit + 1)))
    return {"object": "list", "data": [event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}


async def _stream_events(job_id: str, after_seq: int | None):
    """Oldest first, then every new event as it is written, until the job stops."""
    last = after_seq or 0
    while True:
        rows, status = await asyncio.to_thread(_fetch_new, job_id, last)
        for e in rows:
            last = e.seq
            yield {"event": "event", "id": e.public_id, "data": json.dumps(event_object(e))}
        if status in TERMINAL + ("paused",) and not rows:
            yield {"event": "done", "data": json.dumps({"status": status})}
            return
        if not rows:
            await asyncio.sleep(0.5)


def _fetch_new(job_id: str, last: int):
    with session_scope() as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > last)
                              .order_by(JobEvent.seq).limit(500)))
        status = s.get(FineTuningJob, job_id).status
        s.expunge_all()
        return rows, status


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                     limit: Annotated[int, Query()] = 10) -> dict:
    job = svc.owned_job(session, project, job_id)
    q = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return paginate(session, q, Checkpoint, after, limit, checkpoint_object)
