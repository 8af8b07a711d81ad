"""Job state changes and events, written the same way by the API, the worker, the runner and the reconciler."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from chatforge.db.models import FineTuningJob, JobEvent, utcnow


def add_event(session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))


def finish(session: Session, job: FineTuningJob, status: str, *, error: dict | None = None,
           message: str | None = None) -> None:
    job.status = status
    job.finished_at = utcnow() if status in ("succeeded", "failed", "cancelled") else None
    job.requested = None
    if error is not None:
        job.error = error
    if status in ("succeeded", "failed", "cancelled"):
        job.estimated_finish = None
    if message:
        add_event(session, job.id, message, level="error" if status == "failed" else "info")
