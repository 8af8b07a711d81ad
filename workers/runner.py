"""The training child: `python -m workers.runner JOB_ID OWNER`.

Re-reads the job, resolves its models and files to local folders, runs the method's ml recipe with a
DBSink, and records the outcome (model rows, metrics CSV, status). Bad data or settings fail the job
with an error the user can act on and exit 0; only a crash (signal, OOM kill) exits non-zero, which
the supervising worker treats as an infrastructure fault and retries.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy import select

from chatforge.basemodels import model_dir
from chatforge.db.models import FineTuningJob, JobEvent, Model, StoredFile, new_id
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish
from chatforge.settings import get_settings
from chatforge.storage import Storage, get_storage, restore_newest_folder
from workers.sink import DBSink

log = logging.getLogger("chatforge.runner")


class JobInputError(Exception):
    """Something about the job's inputs that the user must fix (becomes job.error)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class JobContext:
    job: FineTuningJob
    storage: Storage
    base: Model  # the model the job starts from
    root: Model  # its base model
    output_dir: Path
    model_name: str

    def model_path(self, m: Model) -> Path:
        return Path(model_dir(self.storage, m))

    def file_path(self, file_id: str | None) -> Path | None:
        if not file_id:
            return None
        with session_scope() as s:
            f = s.get(StoredFile, file_id)
            if f is None:
                raise JobInputError(f"file {file_id} no longer exists", param="training_file")
            key = f.canonical_key
        with self.storage.local_path(key) as p:
            return Path(p)


def fine_tuned_name(job: FineTuningJob, root: str) -> str:
    return f"ft:{root}:{job.suffix or ''}:{job.id}"


def _context(job_id: str) -> JobContext:
    storage = get_storage()
    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        base = s.get(Model, job.model)
        if base is None:
            raise JobInputError(f"model {job.model} no longer exists", param="model", code="model_not_found")
        root = s.get(Model, base.root) or base
        s.expunge_all()
    out = storage.writable_dir(f"jobs/{job.id}")
    # an object store: this host may never have seen the run; resume from the newest published checkpoint
    restore_newest_folder(storage, f"jobs/{job.id}/checkpoints", out / "checkpoints")
    return JobContext(job, storage, base, root, out, fine_tuned_name(job, root.id))


# Leading columns of a job's metrics CSV (OpenAI's step/train_loss/valid_loss first); the rest follow.
METRICS_CSV_COLUMNS = ("step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second")


def _metrics_csv(session, job: FineTuningJob) -> StoredFile | None:
    rows = [e.data for e in session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq))]
    if not rows:
        return None
    by_step: dict[int, dict] = {}  # one row per step (a final evaluation reports again at the last step)
    for r in rows:
        by_step.setdefault(r.get("step", 0), {}).update(r)
    keys = [k for k in METRICS_CSV_COLUMNS if any(k in r for r in by_step.values())]
    for r in by_step.values():
        keys += [k for k in r if k not in keys and k != "total_steps" and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for step in sorted(by_step):
        w.writerow(by_step[step])
    data = buf.getvalue().encode()
    file_id = new_id("file-")
    key = f"files/{file_id}/raw"
    get_storage().put_stream(key, io.BytesIO(data))
    f = StoredFile(id=file_id, project_id=job.project_id, filename=f"{job.id}-metrics.csv",
                   purpose="fine-tune-results", bytes=len(data), status="processed", format="csv",
                   storage_key=key)
    session.add(f)
    return f


def record_success(ctx: JobContext, *, kind: str, folder_key: str, is_adapter: bool, trained_tokens: int | None,
                   result: dict, settings: dict | None = None) -> None:
    # publish the trained folder (a no-op where output_dir already is the stored folder)
    ctx.storage.put_dir(folder_key, ctx.output_dir / folder_key.removeprefix(f"jobs/{ctx.job.id}/"))
    with session_scope() as s:
        job = s.get(FineTuningJob, ctx.job.id)
        m = s.get(Model, ctx.model_name)
        if m is None:
            s.add(Model(id=ctx.model_name, project_id=job.project_id, kind=kind, parent=job.model,
                        root=ctx.root.id, storage_key=folder_key, is_adapter=is_adapter, job_id=job.id,
                        step=job.step, settings=settings or {}))
        job.fine_tuned_model = ctx.model_name
        if trained_tokens is not None:
            job.trained_tokens = trained_tokens
        job.result = result
        s.flush()
        csv_file = _metrics_csv(s, job)
        job.result_files = [csv_file.id] if csv_file else []
        finish(s, job, "succeeded", message=f"The job has successfully completed: {ctx.model_name}")


def record_stopped(job_id: str, status: str, step: int) -> None:
    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        if status == "paused":
            finish(s, job, "paused", message=f"Job paused at step {step}; resume continues from the checkpoint.")
        else:
            finish(s, job, "cancelled", message=f"Job cancelled at step {step}.")


def fail(job_id: str, message: str, code: str, param: str | None = None) -> None:
    with session_scope() as s:
        job = s.get(FineTuningJob, job_id)
        finish(s, job, "failed", error={"code": code, "message": message, "param": param},
               message=f"Job failed: {message}")


# Job method type -> the recipe name ml.train.servable.export_checkpoint knows.
RECIPE_NAMES = {"supervised": "sft"}

# Tests only: "oom" or "bug" makes the first reported training step fail with a real torch error (an
# impossible allocation, a shape mismatch), to check how each cause is reported. Never set in production.
FAULT_ENV = "CHATFORGE_FAULT_INJECTION"

_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def error_code(e: BaseException) -> str:
    """The error code for an exception that is neither a job input, setting nor data error."""
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return "out_of_memory"
    if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MESSAGES):
        return "out_of_memory"
    return "internal_error"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def main(job_id: str, owner: str) -> int:
    from ml.config import ConfigError
    from ml.records import DataError
    from ml.train.servable import export_checkpoint
    from workers.methods import METHODS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(get_settings().data_dir.resolve() / "torch_extensions"))
    try:
        ctx = _context(job_id)
        mtype = (ctx.job.method or {}).get("type", "supervised")
        start = ctx.model_path(ctx.base)
        sink = DBSink(job_id, ctx.storage, ctx.model_name, ctx.root.id, ctx.base.id, ctx.job.project_id,
                      export=partial(export_checkpoint, start=start, method=RECIPE_NAMES.get(mtype, mtype)))
        sink.fault = os.environ.get(FAULT_ENV) or None
        with session_scope() as s:
            job = s.get(FineTuningJob, job_id)
            if job.step:
                add_event(s, job_id, f"Resuming from the last checkpoint (step {job.step}).")
            else:
                add_event(s, job_id, f"Training started: {mtype} on {ctx.base.id}.")
        METHODS[mtype](ctx, sink)
    except JobInputError as e:
        fail(job_id, str(e), e.code, e.param)
    except ConfigError as e:
        fail(job_id, e.message, "invalid_hyperparameter", e.param)
    except DataError as e:
        fail(job_id, str(e), "invalid_training_data", "training_file")
    except Exception as e:  # noqa: BLE001 - every other failure is classified, reported, never retried
        code = error_code(e)
        if code == "out_of_memory":
            fail(job_id, f"out of memory ({type(e).__name__}: {_first_line(e)}); lower batch_size or "
                 "max_seq_length, or use qlora / gradient_checkpointing", code)
        else:  # a bug or an unexpected library error: name it, do not blame the user's data
            traceback.print_exc()
            fail(job_id, f"{type(e).__name__}: {e}", code)
    _clean_scratch(job_id)
    _after(job_id)
    return 0


def _clean_scratch(job_id: str) -> None:
    """With an object store the job's local folder is scratch: everything worth keeping is published."""
    storage = get_storage()
    if storage.remote:
        import shutil

        shutil.rmtree(storage.writable_dir(f"jobs/{job_id}"), ignore_errors=True)


def _after(job_id: str) -> None:
    """A finished pipeline stage starts the next one."""
    with session_scope() as s:
        pipeline_id = s.get(FineTuningJob, job_id).pipeline_id
    if pipeline_id:
        from chatforge.pipelines import advance_pipeline

        advance_pipeline(pipeline_id)


if __name__ == "__main__":
    from chatforge.logs import setup_logging

    setup_logging(get_settings().log_format)
    sys.exit(main(sys.argv[1], sys.argv[2]))
