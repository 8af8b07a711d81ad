"""Runs one claimed job in a fresh child process and keeps its lease alive.

A child per job gives every job a fresh model (bitsandbytes' 4-bit eval repack must never leak into a
later training run) and frees all memory when it ends. The child is killed if this worker dies
(PR_SET_PDEATHSIG), so a lost worker never leaves an orphan training behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from functools import partial

from chatforge.db.models import FineTuningJob
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish
from chatforge.settings import Settings
from ml.train.launch import die_with_parent
from workers import lease
from workers.capabilities import worker_id
from workers.dbretry import db_unreachable, retry_db

log = logging.getLogger("chatforge.worker")


def supervise(job_id: str, settings: Settings) -> str:
    owner = worker_id()
    with session_scope() as s:
        if not lease.claim(s, job_id, owner, settings.job_lease_seconds):
            return "not claimed (another worker holds it)"
        job = s.get(FineTuningJob, job_id)
        if job.attempts > settings.max_job_attempts:
            finish(s, job, "failed", error={
                "code": "worker_crashed",
                "message": f"The job's worker crashed {job.attempts - 1} times; giving up.",
                "param": None})
            lease.release(s, job_id, owner)
            return "failed (too many attempts)"
        if job.requested == "cancel":
            finish(s, job, "cancelled", message="Job cancelled before it started.")
            lease.release(s, job_id, owner)
            return "cancelled"
        job.status = "running"
        add_event(s, job_id, f"Worker {owner} picked up the job (attempt {job.attempts}).",
                  data={"attempt": job.attempts, "worker": owner})

    cmd = [sys.executable, "-m", "workers.runner", job_id, owner]
    log.info("starting training child for %s", job_id, extra={"job_id": job_id})
    child = subprocess.Popen(cmd, preexec_fn=partial(die_with_parent, signal.SIGKILL), env=os.environ.copy())
    beat = max(1.0, settings.job_lease_seconds / 4)
    try:
        while True:
            try:
                rc = child.wait(timeout=beat)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                with session_scope() as s:
                    renewed = lease.renew(s, job_id, owner, settings.job_lease_seconds)
            except Exception as e:
                if not db_unreachable(e):
                    raise
                # the database is restarting: nobody can take the job meanwhile, so the child keeps
                # training; the next renewal that gets through says whether the lease is still ours
                log.warning("database unreachable renewing the lease on %s; the child keeps running", job_id)
                continue
            if not renewed:
                log.warning("lost the lease on %s; stopping the child", job_id)
                child.kill()
                child.wait()
                return "lease lost"
    except BaseException:
        child.kill()
        raise

    def settle() -> tuple[bool, str]:
        with session_scope() as s:
            job = s.get(FineTuningJob, job_id)
            if rc != 0 and job.status == "running":
                reason = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                if job.attempts >= settings.max_job_attempts:
                    finish(s, job, "failed", error={
                        "code": "worker_crashed",
                        "message": f"The training process died ({reason}) on {job.attempts} attempts; "
                                   "last cause: likely out of memory or killed.", "param": None},
                        message=f"Training process died ({reason}); giving up after {job.attempts} attempts.")
                else:
                    job.status = "queued"
                    add_event(s, job_id, f"Training process died ({reason}); requeued to resume from the last "
                                         "checkpoint.", level="warning")
            s.flush()
            requeue = job.status == "queued"
            requires = job.requires
            lease.release(s, job_id, owner)
        return requeue, requires

    requeue, requires = retry_db(settle, f"recording how {job_id}'s training process ended")
    if requeue:
        from chatforge.queue import enqueue_job

        enqueue_job(job_id, requires)
    return f"child exited {rc}"


