"""Creating and steering fine-tuning jobs: validate the request against the ml configs (one definition
of every hyperparameter), check models and files, write the row, enqueue after commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import BadRequest, NotFound
from api.services.models import visible_model
from chatforge import jobconfig
from chatforge.db.models import FineTuningJob, Project, StoredFile, Worker, utcnow
from chatforge.jobconfig import METHOD_KINDS
from chatforge.jobstate import add_event, finish
from chatforge.queue import enqueue_after_commit
from ml.config import ConfigError

OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")


def build_config(method_type: str, body: dict[str, Any]):
    try:
        return jobconfig.build_config(method_type, body)
    except ConfigError as e:
        raise BadRequest(f"{e.param}: {e.message}", param=e.param, code="invalid_hyperparameter") from None


def _file(session: Session, project: Project, file_id: str | None, param: str, kind: str,
          allow_pending: bool = False) -> StoredFile:
    f = session.get(StoredFile, file_id) if file_id else None
    if f is None or f.project_id != project.id:
        raise NotFound(f"No such File object: {file_id}", param=param, code="file_not_found")
    if allow_pending and f.status in ("uploaded", "error"):
        return f  # still validating on a worker (the job waits), or invalid (the job fails with its message)
    if f.status != "processed":
        raise BadRequest(f"{param} {file_id} is not ready (status {f.status})", param=param)
    if f.kind != kind:
        raise BadRequest(f"{param} {file_id} holds {f.kind} data ({f.format}) but this method needs "
                         f"{kind} data", param=param, code="wrong_file_kind")
    return f


def create_job(session: Session, project: Project, req: dict[str, Any], *, pipeline_id: str | None = None,
               stage: int | None = None, waiting: bool = False) -> FineTuningJob:
    """Validate a job request and write the row. `waiting`: a later pipeline stage whose inputs (start
    model, reward model) are filled in when the stage before it succeeds."""
    method = dict(req.get("method") or {"type": "supervised"})
    mtype = method.get("type", "supervised")
    if not isinstance(mtype, str) or mtype not in METHOD_KINDS:
        raise BadRequest(f"method.type must be one of {', '.join(METHOD_KINDS)}, got {mtype!r}",
                         param="method.type")
    body = method.get(mtype) or {}
    if not isinstance(body, dict):
        raise BadRequest(f"method.{mtype} must be an object of settings, got {type(body).__name__}",
                         param=f"method.{mtype}", code="invalid_hyperparameter")
    body = dict(body)
    if req.get("hyperparameters") and isinstance(body.get("hyperparameters") or {}, dict):
        # OpenAI's legacy top-level hyperparameters (a non-object inside the method is refused just below)
        body["hyperparameters"] = {**req["hyperparameters"], **(body.get("hyperparameters") or {})}
    config = build_config(mtype, body)
    num_processes = req.get("num_processes")
    if num_processes not in (None, 1) and mtype != "supervised":
        raise BadRequest(f"num_processes: only supervised jobs run on several processes; a {mtype} job runs on "
                         "one (leave num_processes unset or 1)", param="num_processes")
    if num_processes not in (None, 1) and getattr(config, "retain_base", "auto") not in ("auto", 0, 0.0):
        raise BadRequest("method.supervised.retain_base: the replay penalty toward the base model runs on one "
                         f"process, not {num_processes} (set it to 0, or leave it \"auto\")",
                         param="method.supervised.retain_base", code="invalid_hyperparameter")
    inputs = jobconfig.inputs(mtype)

    base = visible_model(session, project, req["model"])
    if base.kind == "checkpoint":
        raise BadRequest("start from a base or fine-tuned model, not a checkpoint", param="model")
    if base.kind == "reward_model":
        raise BadRequest(f"{base.id} is a reward model; it cannot be fine-tuned as a chat model",
                         param="model")
    kind = METHOD_KINDS[mtype]
    pending_ok = pipeline_id is None
    train = _file(session, project, req.get("training_file"), "training_file", kind, pending_ok)
    valid = None
    if req.get("validation_file"):
        valid = _file(session, project, req["validation_file"], "validation_file", kind, pending_ok)
    if train.n_examples is not None:  # a file still being validated is checked again by the recipe
        try:
            config.check_examples(train.n_examples)
        except ConfigError as e:
            param = f"method.{mtype}.{e.param}"
            raise BadRequest(f"{param}: {e.message}", param=param, code="invalid_hyperparameter") from None
    extra_files: dict[str, Any] = {}
    for name, model_kind in inputs.items():  # settings naming a model (PPO/RLOO/GRPO's reward_model)
        param = f"method.{mtype}.{name}"
        model_id = body.get(name)
        if waiting:  # a pipeline stage: filled in when the stage before it succeeds
            continue
        if not model_id:
            raise BadRequest(f"{param} is required: the id of a {model_kind} job's result", param=param)
        m = visible_model(session, project, model_id, param=param)
        if m.kind != model_kind:
            raise BadRequest(f"{model_id} is not a {model_kind.replace('_', ' ')}", param=param)
        extra_files[name] = m.id

    suffix = req.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64 or ":" in suffix):
        raise BadRequest("suffix must be a string of at most 64 characters without ':'", param="suffix")
    metadata = req.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise BadRequest("metadata must be an object of at most 16 string values", param="metadata")

    requires = "cuda" if req.get("device") == "cuda" else "any"
    if requires == "cuda" and not _cuda_worker_exists(session):
        raise BadRequest("this job asks for a CUDA device but no live worker has one", param="device",
                         code="no_capable_worker")
    echoed = {"type": mtype, mtype: {**{k: v for k, v in body.items() if k != "hyperparameters"},
                                     "hyperparameters": _openai_hyperparameters(mtype, config, body)}}
    job = FineTuningJob(
        project_id=project.id, model=base.id, method=echoed, training_file=train.id,
        validation_file=valid.id if valid else None, extra_files=extra_files, suffix=suffix,
        seed=int(req.get("seed") if req.get("seed") is not None else getattr(config, "seed", 42)),
        user_metadata=metadata, status="validating_files", requires=requires, num_processes=num_processes,
        pipeline_id=pipeline_id, pipeline_stage=stage,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Validating training file: {train.id}")
    if valid is not None:
        add_event(session, job.id, f"Validating validation file: {valid.id}")
    unsettled = [f for f in (train, valid) if f is not None and f.status != "processed"]
    if unsettled:  # large uploads still validating on a worker (workers.files releases the job), or invalid
        bad = next((f for f in unsettled if f.status == "error"), None)
        if bad is not None:
            param = "training_file" if bad is train else "validation_file"
            finish(session, job, "failed", message=f"File validation failed: {bad.status_details}",
                   error={"code": "invalid_file", "message": bad.status_details or "invalid file", "param": param})
        else:
            add_event(session, job.id, "Waiting for the file(s) to finish validating.")
        return job
    # Files were validated and converted at upload; here they are checked to exist and fit the method.
    add_event(session, job.id, f"Files validated: {train.n_examples} training examples ({train.format})"
              + (f", {valid.n_examples} validation examples" if valid else ""),
              data={"training_examples": train.n_examples,
                    "validation_examples": valid.n_examples if valid else None})
    if waiting:
        job.status = "waiting"
        add_event(session, job.id, f"Waiting for pipeline stage {stage} to succeed.")
        return job
    job.status = "queued"
    job.enqueued_at = utcnow()
    add_event(session, job.id, f"Job queued: {mtype} on {base.id}")
    enqueue_after_commit(session, job.id, job.requires)
    return job


def _openai_hyperparameters(mtype: str, config, body: dict) -> dict:
    given = dict(body.get("hyperparameters") or {})
    out = {}
    for key in OPENAI_HYPERPARAMETERS:
        if key in given:
            out[key] = given[key]
        elif hasattr(config, key):
            out[key] = getattr(config, key)
        elif key == "learning_rate_multiplier" and hasattr(config, "learning_rate"):
            out[key] = "auto"
    if mtype != "dpo":
        out.pop("beta", None)
    return out


def _cuda_worker_exists(session: Session) -> bool:
    from datetime import timedelta

    recent = utcnow() - timedelta(minutes=5)
    return any("cuda" in w.capabilities for w in session.scalars(select(Worker).where(Worker.seen_at > recent)))


def owned_job(session: Session, project: Project, job_id: str) -> FineTuningJob:
    job = session.get(FineTuningJob, job_id)
    if job is None or job.project_id != project.id:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job
