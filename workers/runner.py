"""The training child: `python -m workers.runner JOB_ID OWNER`, or `--spare` to import what training needs
first and then read `JOB_ID OWNER` from stdin (workers.supervisor starts it ahead of the job).

Re-reads the job, resolves its models and files to local folders, runs the method's ml recipe with a
DBSink, and records the outcome (model rows, metrics CSV, status). Bad data or settings fail the job
with an error the user can act on and exit 0; only a crash (signal, OOM kill) exits non-zero, which
the supervising worker treats as an infrastructure fault and retries.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import sys
import traceback
from functools import partial
from pathlib import Path

from chatforge.db.models import FineTuningJob
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event, finish
from chatforge.settings import get_settings
from chatforge.storage import get_storage
from workers.dbretry import EXIT_DB_UNREACHABLE, db_unreachable
from workers.outcome import JobInputError, fail, load_context, owned_job
from workers.sink import DBSink

log = logging.getLogger("chatforge.runner")

# Tests only: "oom", "bug" or "library_valueerror" makes the first reported training step fail with a real torch
# error (an impossible allocation, a shape mismatch, a ValueError from a loss), to check how each cause is
# reported. Never set in production.
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


_DISK_FULL = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


# Below this many free bytes the output folder's disk counts as full (see disk_full).
DISK_FULL_FREE_BYTES = 1 << 20


def disk_full(e: BaseException, folder: Path | None = None) -> bool:
    """The error (or one it came from) is a full disk or an exhausted quota. Libraries wrap the OSError
    (safetensors, torch.save), so their message is checked too. Some say nothing of it: torch.save's zip
    writer raises RuntimeError('[enforce fail at inline_container.cc:...] unexpected pos ...') with no
    errno; so an unrecognised error (not an out-of-memory one) counts as a full disk when `folder`, the
    job's output folder, has almost no space left or refuses a small write."""
    seen: BaseException | None = e
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(seen).lower() for m in _DISK_FULL):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is None or not isinstance(e, (OSError, RuntimeError)) or error_code(e) == "out_of_memory":
        return False
    return no_space_left(folder)


def no_space_left(folder: Path, probe_bytes: int = 64 * 1024) -> bool:
    """The disk (or quota) holding `folder` is full: under DISK_FULL_FREE_BYTES free, or a small probe write
    gets ENOSPC/EDQUOT (a quota the free count does not show)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free < DISK_FULL_FREE_BYTES:
            return True
    except OSError:
        return False
    probe = folder / f".space-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)
    return False


def _pause_for_disk(job_id: str, e: BaseException, owner: str | None = None) -> None:
    """Pause (not fail) the job: its complete checkpoints are intact, and once space is freed a resume
    continues from the newest of them. A half-written checkpoint is never published (ml.train.checkpoints
    writes into a staging folder and renames it complete), and the resume deletes its leftovers."""
    where = get_storage().location(f"jobs/{job_id}")
    with session_scope() as s:
        job = owned_job(s, job_id, owner)  # a cancel, a requeue or another worker's outcome stands
        if job is None:
            return
        add_event(s, job_id, f"The disk holding the job's outputs is full ({where}): {_first_line(e)}. "
                             f"The job is paused at step {job.step or 0}; free space on that disk, then resume "
                             "the job: it continues from its last complete checkpoint.", level="error",
                  data={"code": "disk_full", "path": where, "step": job.step or 0})
        finish(s, job, "paused")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _process_env() -> None:
    """Before torch and the Hugging Face libraries are imported: they read these at import."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(get_settings().data_dir.resolve() / "torch_extensions"))


def main(job_id: str, owner: str) -> int:
    from chatforge.jobconfig import api_param
    from ml.config import ConfigError
    from ml.records import DataError
    from ml.train.servable import export_checkpoint
    from workers.methods import run_job

    _process_env()
    sink: DBSink | None = None
    output_dir: Path | None = None
    mtype: str | None = None
    try:
        ctx = load_context(job_id)
        ctx.owner, output_dir = owner, ctx.output_dir
        mtype = (ctx.job.method or {}).get("type", "supervised")
        start = ctx.model_path(ctx.base)
        sink = DBSink(job_id, ctx.storage, ctx.model_name, ctx.root.id, ctx.base.id, ctx.job.project_id,
                      export=partial(export_checkpoint, start=start, method=mtype),
                      owner=owner)
        sink.fault = os.environ.get(FAULT_ENV) or None
        with session_scope() as s:
            job = s.get(FineTuningJob, job_id)
            if job.step:
                add_event(s, job_id, f"Resuming from the last checkpoint (step {job.step}).")
            else:
                add_event(s, job_id, f"Training started: {mtype} on {ctx.base.id}.")
        run_job(mtype, ctx, sink)
    except JobInputError as e:
        fail(job_id, str(e), e.code, e.param, owner)
    except ConfigError as e:
        param = api_param(mtype, e.param) if mtype else e.param
        fail(job_id, f"{param}: {e.message}", "invalid_hyperparameter", param, owner)
    except DataError as e:
        fail(job_id, str(e), "invalid_training_data", "training_file", owner)
    except Exception as e:  # noqa: BLE001 - every other failure is classified, reported, never retried
        if db_unreachable(e):  # the database stayed down past the sink's patience: an infrastructure
            log.error("database unreachable; exiting for a retry: %s", _first_line(e))  # fault, retried
            return EXIT_DB_UNREACHABLE
        if sink is not None and sink.abandoned:  # the job is another worker's now; it records the outcome
            log.warning("job %s was abandoned, then training raised: %s", job_id, _first_line(e))
            return 0
        if disk_full(e, output_dir):  # not the user's fault and nothing to retry until someone frees space
            log.error("disk full: %s", _first_line(e))  # (logging, unlike a print, survives a full log disk)
            _pause_for_disk(job_id, e, owner)
            _clean_scratch(job_id)
            return 0
        code = error_code(e)
        if code == "out_of_memory":
            fail(job_id, f"out of memory ({type(e).__name__}: {_first_line(e)}); lower batch_size or "
                 "max_seq_length, or use qlora / gradient_checkpointing", code, owner=owner)
        else:  # a bug or an unexpected library error: name it, do not blame the user's data
            traceback.print_exc()
            fail(job_id, f"{type(e).__name__}: {e}", code, owner=owner)
    if sink is not None and sink.abandoned:  # stopped without touching the job: its scratch folder and
        log.warning("job %s is no longer ours; stopped training without recording anything", job_id)
        return 0  # what follows it are the new owner's
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


def _job_waiting() -> bool:
    """The worker has written the job's line to stdin (or closed it: it stopped)."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


# The replay set is prepared ahead only for base models whose stored folder is at most this fraction of the
# host's available memory (float32 weights take 2-8 times the folder): never crowd out a job running beside it.
PREPARE_MEMORY_FRACTION = 1 / 16


def _prepare_while_idle() -> None:
    """While no job is waiting, compute the default base model's replay set (retain_base) so that the first
    default LoRA job on it reads it from the cache instead of spending seconds on it. Gives way as soon as a job
    arrives (between tokens); anything going wrong here only means the job computes the set itself."""
    from chatforge.basemodels import model_dir
    from chatforge.db.models import Model
    from chatforge.malloc import trim
    from ml.memory import available_bytes
    from ml.train.retain import prepare_retain_set

    settings = get_settings()
    name = settings.default_base_model
    try:
        if _job_waiting():
            return
        with session_scope() as s:
            row = s.get(Model, name)
            if row is None or row.kind != "base" or row.settings.get("quantization", "none") != "none":
                return
            folder = model_dir(get_storage(), row)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        available = available_bytes("cpu")
        if size > available * PREPARE_MEMORY_FRACTION:
            log.info("not preparing the replay set of %s ahead: %d MB of weights against %d MB free", name,
                     size >> 20, available >> 20)
            return
        if prepare_retain_set(folder, settings.data_dir / "cache", _job_waiting) is None:
            log.info("a job arrived while preparing the replay set of %s; left to the job", name)
    except Exception as e:  # noqa: BLE001 - an optimisation: the job computes the set itself
        log.warning("could not prepare the replay set of %s ahead: %s", name, _first_line(e))
    finally:
        import gc

        gc.collect()
        trim()


def spare() -> int:
    """Import torch and every method's recipe, then run the job named on stdin (none: exit quietly)."""
    _process_env()
    from ml.methods import METHODS
    from ml.train.servable import export_checkpoint  # noqa: F401
    from workers.methods import run_job  # noqa: F401

    for spec in METHODS.values():
        spec.load_recipe()
    if get_settings().prepare_replay_set:
        _prepare_while_idle()
    words = sys.stdin.readline().split()
    if len(words) != 2:  # the worker stopped, or gave the job to another process
        return 0
    return main(*words)


if __name__ == "__main__":
    from chatforge.logs import setup_logging

    setup_logging(get_settings().log_format)
    sys.exit(spare() if sys.argv[1:] == ["--spare"] else main(sys.argv[1], sys.argv[2]))
