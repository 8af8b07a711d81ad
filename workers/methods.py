"""How a job runs, per kind of training data (ml.config.MethodSpec.data): build the ml config from the
stored job, call the method's recipe (MethodSpec.recipe), record the outcome. A new method with one of
these data kinds needs nothing here. Kept thin; all training logic lives in ml/."""

from __future__ import annotations

from dataclasses import replace

from chatforge.db.models import FineTuningJob
from chatforge.db.session import session_scope
from chatforge.jobconfig import config_for
from chatforge.settings import get_settings
from ml.methods import METHODS, MethodSpec
from workers.distributed import gpus_here, processes_for, run_supervised_ranks
from workers.outcome import JobContext, JobInputError, record_stopped, record_success


def run_supervised_job(ctx: JobContext, sink, spec: MethodSpec) -> None:
    job = ctx.job
    cfg = replace(config_for(job.method), seed=job.seed)
    if ctx.base.is_adapter:
        raise JobInputError("supervised training on top of an adapter model is not supported yet; start from "
                            f"its base model {ctx.base.root}", param="model")
    args = (ctx.model_path(ctx.base), ctx.file_path(job.training_file), ctx.file_path(job.validation_file),
            ctx.output_dir, sink)
    gpus = gpus_here()
    # an explicit replay penalty (retain_base) runs on one process; "auto" lets the job spread over the GPUs
    n = 1 if job.num_processes is None and cfg.retain_base not in ("auto", 0, 0.0) else \
        processes_for(job.num_processes, gpus)
    if n > 1:
        res = run_supervised_ranks(cfg, n, *args, gpus=gpus)
    else:
        res = spec.load_recipe()(cfg, *args, resume=True, cache_dir=get_settings().data_dir / "cache")
    if res.status != "succeeded":
        record_stopped(job.id, res.status, res.steps, ctx.owner)
        return
    _update_hyperparameters(job.id, res.config)
    record_success(ctx, kind="fine_tuned", folder_key=f"jobs/{job.id}/model", is_adapter=res.is_adapter,
                   trained_tokens=res.trained_tokens,
                   result={"steps": res.steps, "metrics": res.metrics, "adapter": res.adapter, **res.runtime})


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


def _start_path(ctx: JobContext):
    """Folder the RL recipes start from: a base/full model folder or an SFT adapter folder."""
    return ctx.model_path(ctx.base)


def _record_rl(ctx: JobContext, res, spec: MethodSpec) -> None:
    job = ctx.job
    if res.status != "succeeded":
        record_stopped(job.id, res.status, res.steps, ctx.owner)
        return
    record_success(ctx, kind=spec.produces, folder_key=f"jobs/{job.id}/model", is_adapter=res.is_adapter,
                   trained_tokens=None, result={"steps": res.steps, "metrics": res.metrics, "method": res.method})


def run_preference_job(ctx: JobContext, sink, spec: MethodSpec) -> None:
    """reward_model and dpo: offline training on a preference file."""
    job = ctx.job
    cfg = replace(config_for(job.method), seed=job.seed)
    res = spec.load_recipe()(cfg, _start_path(ctx), ctx.file_path(job.training_file), ctx.file_path(job.validation_file),
             ctx.output_dir, sink, resume=True)
    if spec.produces == "reward_model" and res.status == "succeeded" and "valid_accuracy" in res.metrics:
        sink.log(f"Reward model pairwise accuracy on the validation file: {res.metrics['valid_accuracy']:.3f}",
                 data={k: v for k, v in res.metrics.items() if k.startswith("valid_")})
    _record_rl(ctx, res, spec)


def run_online_job(ctx: JobContext, sink, spec: MethodSpec) -> None:
    """ppo, rloo, grpo: the policy samples replies to the prompts file, a trained reward model scores them."""
    from chatforge.db.models import Model

    job = ctx.job
    mtype = spec.name
    cfg = replace(config_for(job.method), seed=job.seed)
    with session_scope() as s:
        rm = s.get(Model, (job.extra_files or {}).get("reward_model"))
        if rm is None or rm.kind != "reward_model":
            raise JobInputError("the reward model of this job no longer exists", param=f"method.{mtype}.reward_model")
        s.expunge(rm)
    res = spec.load_recipe()(cfg, _start_path(ctx), ctx.file_path(job.training_file), ctx.model_path(rm), ctx.output_dir, sink,
             resume=True, valid_file=ctx.file_path(job.validation_file))
    _record_rl(ctx, res, spec)


RUNNERS = {"sft": run_supervised_job, "preference": run_preference_job, "prompts": run_online_job}


def run_job(mtype: str, ctx: JobContext, sink) -> None:
    """Run job `ctx` of method `mtype` with the runner of its data kind."""
    spec = METHODS[mtype]
    RUNNERS[spec.data](ctx, sink, spec)
