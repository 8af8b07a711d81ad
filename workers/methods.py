"""One function per job method: build the ml config from the stored job, call the recipe, record the
outcome. Kept thin; all training logic lives in ml/."""

from __future__ import annotations

from dataclasses import replace

from chatforge.db.models import FineTuningJob
from chatforge.jobconfig import config_for
from chatforge.db.session import session_scope
from workers.runner import JobContext, JobInputError, record_stopped, record_success


def run_supervised_job(ctx: JobContext, sink) -> None:
    from ml.train.sft import run_supervised

    job = ctx.job
    cfg = replace(config_for(job.method), seed=job.seed)
    if ctx.base.is_adapter:
        raise JobInputError("supervised training on top of an adapter model is not supported yet; start from "
                            f"its base model {ctx.base.root}", param="model")
    res = run_supervised(cfg, ctx.model_path(ctx.base), ctx.file_path(job.training_file),
                         ctx.file_path(job.validation_file), ctx.output_dir, sink, resume=True)
    if res.status != "succeeded":
        record_stopped(job.id, res.status, res.steps)
        return
    _update_hyperparameters(job.id, res.config)
    record_success(ctx, kind="fine_tuned", folder_key=f"jobs/{job.id}/model", is_adapter=res.is_adapter,
                   trained_tokens=res.trained_tokens,
                   result={"steps": res.steps, "metrics": res.metrics, "adapter": res.adapter})


def _update_hyperparameters(job_id: str, resolved) -> None:
    """Once "auto" is resolved, show the values actually used (as OpenAI does)."""
    if resolved is None:
        return
    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        mtype = job.method.get("type", "supervised")
        method = {**job.method, mtype: dict(job.method.get(mtype) or {})}
        hp = dict(method[mtype].get("hyperparameters") or {})
        for key in ("n_epochs", "batch_size", "learning_rate_multiplier"):
            if hasattr(resolved, key):
                hp[key] = getattr(resolved, key)
        method[mtype]["hyperparameters"] = hp
        job.method = method


METHODS = {"supervised": run_supervised_job}
