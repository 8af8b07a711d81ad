"""Job ownership through a lease in the job row: an atomic claim, a heartbeat that renews it, and a
release. Two deliveries of the same wake-up can never both run a job."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from chatforge.db.models import FineTuningJob, utcnow

RUNNABLE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


def claim(session: Session, job_id: str, owner: str, lease_s: int) -> bool:
    now = utcnow()
    res = session.execute(
        update(FineTuningJob)
        .where(
            FineTuningJob.id == job_id,
            FineTuningJob.status.in_(RUNNABLE),
            or_(FineTuningJob.lease_expires_at.is_(None), FineTuningJob.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=FineTuningJob.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1


def renew(session: Session, job_id: str, owner: str, lease_s: int) -> bool:
    res = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1


def release(session: Session, job_id: str, owner: str) -> None:
    session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
