"""The three-stage InstructGPT pipeline: SFT -> reward model -> PPO as three chained jobs.

All three jobs exist from the start (visible through the normal job API); stages 2 and 3 wait in
status "waiting" until the stage before them succeeds, then take its output as their input:
the reward model starts from the SFT model (not the untrained base), and PPO starts its policy from
the SFT model and is rewarded by the new reward model. A failed or cancelled stage stops the chain
and the pipeline says which stage failed and why. `advance` is idempotent; the worker calls it when a
job ends and the reconciler calls it periodically.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatforge.db.models import FineTuningJob, Pipeline, utcnow
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish

STAGES = ("sft", "reward_model", "ppo")
TERMINAL = ("succeeded", "failed", "cancelled")


def stage_jobs(session: Session, pipeline_id: str) -> list[FineTuningJob]:
    return list(session.scalars(select(FineTuningJob).where(FineTuningJob.pipeline_id == pipeline_id)
                                .order_by(FineTuningJob.pipeline_stage)))


def advance(session: Session, pipe: Pipeline) -> list[FineTuningJob]:
    """Move the pipeline forward; returns jobs that became queued (the caller enqueues after commit)."""
    if pipe.status in TERMINAL:
        return []
    jobs = stage_jobs(session, pipe.id)
    started: list[FineTuningJob] = []
    for i, job in enumerate(jobs):
        if job.status in ("failed", "cancelled"):
            reason = (job.error or {}).get("message") or job.status
            pipe.status = "failed" if job.status == "failed" else "cancelled"
            pipe.error = {"stage": STAGES[i], "job_id": job.id,
                          "message": f"stage {i + 1} ({STAGES[i]}) {job.status}: {reason}"}
            for later in jobs[i + 1:]:
                if later.status == "waiting":
                    finish(session, later, "cancelled",
                           message=f"Not started: pipeline stage {i + 1} ({STAGES[i]}) {job.status}.")
            return started
        if job.status != "succeeded":
            if job.status == "waiting" and i > 0 and jobs[i - 1].status == "succeeded":
                _start(session, jobs, i)
                started.append(job)
            return started
    pipe.status = "succeeded"
    return started


def _start(session: Session, jobs: list[FineTuningJob], i: int) -> None:
    job, sft = jobs[i], jobs[0]
    job.model = sft.fine_tuned_model
    if STAGES[i] == "ppo":
        job.extra_files = {**(job.extra_files or {}), "reward_model": jobs[1].fine_tuned_model}
    job.status, job.enqueued_at = "queued", utcnow()
    add_event(session, job.id, f"Pipeline stage {i + 1} ({STAGES[i]}) starts from {job.model}"
              + (f" with reward model {job.extra_files['reward_model']}" if STAGES[i] == "ppo" else "") + ".")


def advance_pipeline(pipeline_id: str) -> None:
    from chatforge.queue import enqueue_job

    with session_scope() as s:
        pipe = s.get(Pipeline, pipeline_id)
        started = advance(s, pipe) if pipe is not None else []
        wake = [(j.id, j.requires) for j in started]
    for job_id, requires in wake:
        enqueue_job(job_id, requires)


def advance_all() -> None:
    with session_scope() as s:
        ids = list(s.scalars(select(Pipeline.id).where(Pipeline.status == "running")))
    for pid in ids:
        advance_pipeline(pid)
