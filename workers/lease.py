"""Job ownership through a lease in the job row: an atomic claim, a heartbeat that renews it, and a
release. Two deliveries of the same wake-up can never both run a job.

The same lease columns exist on fine-tuning jobs and eval runs; `table` picks one (runnable states
differ: a job runs as "running", an eval run as "in_progress")."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from chatforge.db.models import EvalRun, FineTuningJob, utcnow

RUNNABLE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
EVAL_RUNNABLE = ("queued", "in_progress")


def claim(session: Session, job_id: str, owner: str, lease_s: int, table=FineTuningJob) -> bool:
    now = utcnow()
    runnable = EVAL_RUNNABLE if table is EvalRun else RUNNABLE
    res = session.execute(
        update(table)
        .where(
            table.id == job_id,
            table.status.in_(runnable),
            or_(table.lease_expires_at.is_(None), table.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=table.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1


def renew(session: Session, job_id: str, owner: str, lease_s: int, table=FineTuningJob) -> bool:
    res = session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1


def release(session: Session, job_id: str, owner: str, table=FineTuningJob) -> None:
    session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
