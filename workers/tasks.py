"""Celery tasks. Thin, like web views: take an id, re-read the row, decide, delegate.

run_job is safe to run twice: the lease claim lets exactly one delivery run a job, and a job already
finished, paused or cancelled is left alone. Retries are for infrastructure faults only (a training
child killed by a signal or the OOM killer), never for bad data.
"""

from __future__ import annotations

import logging
import os
import socket

from chatforge.db.models import EvalRun, FineTuningJob
from chatforge.db.session import session_scope
from chatforge.queue import PING, RECONCILE, RUN_EVAL, RUN_JOB, get_celery
from chatforge.settings import get_settings

app = get_celery()
log = logging.getLogger("chatforge.worker")


@app.task(name=PING, ignore_result=False)
def ping(nonce: str) -> dict:
    """Round trip through the broker and the database: proves the wiring."""
    from sqlalchemy import text

    with session_scope() as s:
        db = s.execute(text("SELECT 1")).scalar()
    return {"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid(), "db": db}


@app.task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    from workers.supervisor import supervise

    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        if job is None:
            log.warning("job %s does not exist; ignoring wake-up", job_id)
            return "missing"
        if job.status not in ("queued", "running"):
            return f"skipped ({job.status})"
    return supervise(job_id, get_settings())


@app.task(name=RUN_EVAL, acks_late=True)
def run_eval(run_id: str) -> str:
    """Sample and grade one eval run; safe to deliver twice (leased like run_job)."""
    from workers.evals import run_eval_run

    with session_scope() as s:
        run = s.get(EvalRun, run_id)
        if run is None:
            log.warning("eval run %s does not exist; ignoring wake-up", run_id)
            return "missing"
        if run.status not in ("queued", "in_progress"):
            return f"skipped ({run.status})"
    return run_eval_run(run_id, get_settings())


@app.task(name=RECONCILE)
def reconcile() -> dict:
    from workers.reconcile import reconcile_once

    return reconcile_once(get_settings())
