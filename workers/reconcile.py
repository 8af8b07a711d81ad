"""The reconciler: the database is the truth, so every worker periodically repairs what the broker lost.

- a running job whose lease lapsed (its worker died) is requeued, or failed after too many attempts;
- a queued job that has waited long without being claimed (the broker lost its wake-up, e.g. Redis
  restarted empty) is sent again; duplicates are harmless because claiming is atomic;
- the same two repairs for eval runs (an eval run resumes after the items it already stored);
- this worker's capabilities are refreshed in the workers table (heartbeat).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select

from chatforge.db.models import EvalRun, FineTuningJob, Worker, utcnow
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish
from chatforge.queue import RUN_EVAL, enqueue_job
from chatforge.settings import Settings
from workers.capabilities import detect, worker_id

log = logging.getLogger("chatforge.reconciler")


def heartbeat(settings: Settings) -> None:
    caps, mem = detect(settings.worker_capabilities)
    with session_scope() as s:
        row = s.get(Worker, worker_id())
        if row is None:
            s.add(Worker(id=worker_id(), capabilities=",".join(caps), gpu_memory_mb=mem))
        else:
            row.seen_at, row.capabilities, row.gpu_memory_mb = utcnow(), ",".join(caps), mem
        # forget workers not seen for a long time
        stale = utcnow() - timedelta(seconds=max(300, 10 * settings.reconcile_interval_seconds))
        for w in s.scalars(select(Worker).where(Worker.seen_at < stale)):
            s.delete(w)


def reconcile_once(settings: Settings) -> dict:
    now = utcnow()
    requeue: list[tuple[str, str]] = []
    failed = 0
    with session_scope() as s:
        lapsed = s.scalars(select(FineTuningJob).where(
            FineTuningJob.status == "running",
            or_(FineTuningJob.lease_expires_at.is_(None), FineTuningJob.lease_expires_at < now),
        ).with_for_update(skip_locked=True))
        for job in lapsed:
            job.lease_owner, job.lease_expires_at = None, None
            if job.attempts >= settings.max_job_attempts:
                finish(s, job, "failed", error={
                    "code": "worker_lost",
                    "message": f"The worker running this job stopped responding {job.attempts} times; giving up.",
                    "param": None}, message="Worker lost too many times; the job failed.")
                failed += 1
                continue
            job.status = "queued"
            job.enqueued_at = now
            add_event(s, job.id, "The worker running this job stopped responding; requeued to resume from "
                                 "the last checkpoint.", level="warning")
            requeue.append((job.id, job.requires))
        patience = timedelta(seconds=max(30, 4 * settings.reconcile_interval_seconds))
        waiting = s.scalars(select(FineTuningJob).where(
            FineTuningJob.status == "queued",
            FineTuningJob.lease_owner.is_(None),
            or_(FineTuningJob.enqueued_at.is_(None), FineTuningJob.enqueued_at < now - patience),
        ).with_for_update(skip_locked=True))
        for job in waiting:
            job.enqueued_at = now
            requeue.append((job.id, job.requires))
    runs, runs_failed = _reconcile_eval_runs(settings, now)
    for job_id, requires in requeue:
        try:
            enqueue_job(job_id, requires)
        except Exception:
            log.warning("broker unreachable; will retry %s", job_id, exc_info=True)
    for run_id, requires in runs:
        try:
            enqueue_job(run_id, requires, RUN_EVAL)
        except Exception:
            log.warning("broker unreachable; will retry %s", run_id, exc_info=True)
    _advance_pipelines()
    return {"requeued": [j for j, _ in requeue] + [r for r, _ in runs], "failed": failed + runs_failed}


def _reconcile_eval_runs(settings: Settings, now) -> tuple[list[tuple[str, str]], int]:
    """Eval runs whose worker died go back to the queue (their stored items are kept); queued runs
    whose wake-up was lost are sent again."""
    requeue: list[tuple[str, str]] = []
    failed = 0
    with session_scope() as s:
        lapsed = s.scalars(select(EvalRun).where(
            EvalRun.status == "in_progress",
            or_(EvalRun.lease_expires_at.is_(None), EvalRun.lease_expires_at < now),
        ).with_for_update(skip_locked=True))
        for run in lapsed:
            run.lease_owner, run.lease_expires_at = None, None
            if run.attempts >= settings.max_job_attempts:
                run.status, run.finished_at = "failed", now
                run.error = {"code": "worker_lost",
                             "message": f"The worker running this eval stopped responding {run.attempts} times; "
                                        "giving up."}
                failed += 1
                continue
            run.status, run.enqueued_at = "queued", now
            requeue.append((run.id, run.requires))
        patience = timedelta(seconds=max(30, 4 * settings.reconcile_interval_seconds))
        waiting = s.scalars(select(EvalRun).where(
            EvalRun.status == "queued",
            EvalRun.lease_owner.is_(None),
            or_(EvalRun.enqueued_at.is_(None), EvalRun.enqueued_at < now - patience),
        ).with_for_update(skip_locked=True))
        for run in waiting:
            run.enqueued_at = now
            requeue.append((run.id, run.requires))
    return requeue, failed


def _advance_pipelines() -> None:
    from chatforge.pipelines import advance_all

    advance_all()


def reconcile_forever(settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            heartbeat(settings)
            reconcile_once(settings)
        except Exception:
            log.exception("reconcile pass failed")
        stop.wait(settings.reconcile_interval_seconds)


