"""Runs one claimed job in a fresh child process and keeps its lease alive.

A child per job gives every job a fresh model (bitsandbytes' 4-bit eval repack must never leak into a
later training run) and frees all memory when it ends. The child is killed if this worker dies
(PR_SET_PDEATHSIG), so a lost worker never leaves an orphan training behind.

With `warm_runner` (the default) the child is started ahead, when the worker is ready and after each job:
it imports torch and the recipes, then waits for a job on its stdin (workers.runner --spare). It is still a
process of one job, started before that job was known; only the imports are done ahead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from functools import partial

from chatforge.db.models import FineTuningJob
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish
from chatforge.settings import Settings
from ml.train.launch import die_with_parent
from workers import lease
from workers.capabilities import worker_id
from workers.dbretry import EXIT_DB_UNREACHABLE, db_unreachable, retry_db

log = logging.getLogger("chatforge.worker")

# How often a lease renewal is retried while the database is unreachable (instead of a whole beat).
UNREACHABLE_RETRY_S = 0.75


_spare_lock = threading.Lock()
_spare: subprocess.Popen | None = None


def _runner(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers.runner", *args], stdin=stdin,
                            preexec_fn=partial(die_with_parent, signal.SIGKILL),  # noqa: PLW1509
                            env=os.environ.copy())  # the hook only calls prctl: safe after fork


def keep_spare(settings: Settings) -> None:
    """Start the training process for the next job now (if warm_runner is on and none is waiting)."""
    global _spare
    if not settings.warm_runner:
        return
    with _spare_lock:
        if _spare is None or _spare.poll() is not None:
            _spare = _runner("--spare", stdin=subprocess.PIPE)


def drop_spare() -> None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.poll() is None:
        spare.kill()
        spare.wait()


def start_child(job_id: str, owner: str) -> tuple[subprocess.Popen, bool]:
    """The job's training process: the waiting spare if there is a live one, else a new one; and which."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.poll() is None:
        try:
            spare.stdin.write(f"{job_id} {owner}\n".encode())
            spare.stdin.close()
            return spare, True
        except OSError:  # it died between the poll and the write
            spare.kill()
            spare.wait()
    return _runner(job_id, owner), False


def supervise(job_id: str, settings: Settings) -> str:
    try:
        return _supervise(job_id, settings)
    finally:
        try:
            keep_spare(settings)
        except OSError as e:  # cannot fork now (memory, process limit): the next job starts cold
            log.warning("could not start a training process ahead: %s", e)


def _supervise(job_id: str, settings: Settings) -> str:
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

    child, warm = start_child(job_id, owner)
    log.info("training %s in %s child %d", job_id, "a warm" if warm else "a new", child.pid,
             extra={"job_id": job_id})
    beat = max(1.0, settings.job_lease_seconds / 4)
    wait = beat
    try:
        while True:
            try:
                rc = child.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                with session_scope() as s:
                    renewed = lease.renew(s, job_id, owner, settings.job_lease_seconds)
                wait = beat
            except Exception as e:
                if not db_unreachable(e):
                    raise
                # the database is restarting: nobody can take the job meanwhile, so the child keeps
                # training; renewal is retried often (not a whole beat later) so the lease is renewed as
                # soon as the database is back, before it lapses where possible; the renewal that gets
                # through says whether the lease is still ours
                if wait == beat:
                    log.warning("database unreachable renewing the lease on %s; the child keeps running", job_id)
                wait = UNREACHABLE_RETRY_S
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
            job = s.get(FineTuningJob, job_id, with_for_update=True)
            requeue = False
            # only while the job is still ours: after a long outage it may be requeued or another worker's
            if rc != 0 and job.status == "running" and job.lease_owner == owner:
                if rc == EXIT_DB_UNREACHABLE:
                    reason, cause = f"exit code {rc}", "database unreachable"
                    what = "Training process could not reach the database"
                else:
                    reason = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                    cause, what = "likely out of memory or killed", "Training process died"
                if job.attempts >= settings.max_job_attempts:
                    finish(s, job, "failed", error={
                        "code": "worker_crashed",
                        "message": f"The training process died ({reason}) on {job.attempts} attempts; "
                                   f"last cause: {cause}.", "param": None},
                        message=f"{what} ({reason}); giving up after {job.attempts} attempts.")
                else:
                    job.status = "queued"
                    requeue = True
                    add_event(s, job_id, f"{what} ({reason}); requeued to resume from the last "
                                         "checkpoint.", level="warning")
            s.flush()
            requires = job.requires
            lease.release(s, job_id, owner)
        return requeue, requires

    requeue, requires = retry_db(settle, f"recording how {job_id}'s training process ended")
    if requeue:
        from chatforge.queue import enqueue_job

        enqueue_job(job_id, requires)
    return f"child exited {rc}"


