"""DBSink: the JobSink (ml.events) a training child writes through. Events, metrics, checkpoints and
progress go straight into the job tables, so any API replica can show them; control() reads the
user's cancel/pause request.

The sink knows the lease owner its child runs for. Once the job is no longer running under that owner
(after an outage longer than the lease the reconciler requeued it, another worker may hold it now), the
child *abandons* it: control() stops the training (the trainer hears "cancel") and every later write of
this child is dropped, so the job row and its events are left to whoever owns the job now."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatforge.db.models import Checkpoint, FineTuningJob, JobEvent, Model, utcnow
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event
from chatforge.storage import Storage
from ml.train.servable import Servable
from workers.dbretry import retry_db

log = logging.getLogger("chatforge.runner")


class DBSink:
    """`export` turns a raw trainer checkpoint into its servable form (ml.train.servable); each
    checkpoint is registered as a model of that kind, so its id serves the weights it holds."""

    def __init__(self, job_id: str, storage: Storage, model_name: str, root: str, parent: str,
                 project_id: str, export: Callable[[Path], Servable] | None = None, owner: str | None = None
                 ) -> None:
        self.job_id, self.storage, self.owner = job_id, storage, owner
        self.abandoned = False  # the job is no longer ours: stop training, write nothing more
        self.model_name, self.root, self.parent, self.project_id = model_name, root, parent, project_id
        self.export = export
        self.fault: str | None = None  # workers.runner.FAULT_ENV, tests only
        self._t0: float | None = None
        self._step0 = 0
        self._last_control_check = 0.0
        self._control = None

    def owns(self, job: FineTuningJob | None) -> bool:
        """The job still runs under this child's lease owner (an owner-less sink, as in tests, only checks
        that it runs)."""
        return job is not None and job.status == "running" and (self.owner is None or job.lease_owner == self.owner)

    def _abandon(self, job: FineTuningJob | None) -> None:
        """Called inside the session that read `job`."""
        if not self.abandoned:
            self.abandoned = True
            log.warning("job %s is no longer running under %s (status %s, owner %s); abandoning it",
                        self.job_id, self.owner, job.status if job else None, job.lease_owner if job else None)

    def _add_event_once(self, what: str, fill: Callable[[Session], bool], **event: Any) -> None:
        """Write one event (and whatever `fill` changes on the job; it returns False to drop the write)
        exactly once across retries: the event's timestamp is fixed before the first try, so a retry whose
        earlier commit got through but whose acknowledgement was lost finds it and writes nothing."""
        stamp, tries = utcnow(), 0

        def write() -> None:
            nonlocal tries
            tries += 1
            with session_scope() as s:
                if tries > 1 and s.scalar(select(JobEvent.seq).where(
                        JobEvent.job_id == self.job_id, JobEvent.created_at == stamp,
                        JobEvent.type == event.get("type", "message"), JobEvent.message == event["message"])):
                    return  # the earlier try was committed
                if not fill(s):
                    return
                s.add(JobEvent(job_id=self.job_id, created_at=stamp, **event))

        retry_db(write, what)

    def log(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if self.abandoned:
            return
        self._add_event_once("logging an event", lambda s: True, message=message, level=level,
                             data=_jsonable(data))

    def metrics(self, step: int, values: dict[str, float], total_steps: int | None = None) -> None:
        if self.fault:
            _inject(self.fault)
        if self.abandoned:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._step0 = now, step - 1

        def fill(s: Session) -> bool:
            job = s.get(FineTuningJob, self.job_id, with_for_update=True)
            if not self.owns(job):  # requeued or taken over meanwhile: this step is not the job's any more
                self._abandon(job)
                return False
            job.step = max(job.step or 0, step)
            if total_steps:
                job.total_steps = total_steps
            done = step - self._step0
            if total_steps and done > 0:
                per_step = (now - self._t0) / done
                job.estimated_finish = utcnow() + timedelta(seconds=per_step * max(0, total_steps - step))
            if "num_tokens" in values:
                job.trained_tokens = int(values["num_tokens"])
            return True

        parts = [f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, (int, float))]
        self._add_event_once(f"recording step {step}", fill, type="metrics",
                             message=f"Step {step}/{total_steps or '?'}: " + ", ".join(parts),
                             data={"step": step, "total_steps": total_steps, **_jsonable(values)})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        if self.abandoned:
            return
        path = Path(path)
        servable = self.export(path) if self.export else Servable(path, "adapter")
        key = f"jobs/{self.job_id}/checkpoints/{path.name}"
        if not self.storage.exists(key) or not self.storage.exists(_key(key, servable, path)):
            self.storage.put_dir(key, path)  # remote stores: upload the folder
        if getattr(self.storage, "remote", False):  # the trainer rotated old checkpoints away; so does the store
            parent = key.rsplit("/", 1)[0]
            for name in self.storage.list_folders(parent):
                if not (path.parent / name).exists():
                    self.storage.delete(f"{parent}/{name}")
        model_id = f"{self.model_name}:ckpt-step-{step}"
        settings = {"serves_as": "reward_model"} if servable.kind == "reward_model" else {}
        def write() -> bool:
            with session_scope() as s:
                job = s.get(FineTuningJob, self.job_id, with_for_update=True)
                if not self.owns(job):
                    self._abandon(job)
                    return False
                if s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step)):
                    return False  # a resumed attempt re-reported it
                s.add(Checkpoint(job_id=self.job_id, step=step, metrics=_jsonable(metrics), model_id=model_id))
                if s.get(Model, model_id) is None:
                    s.add(Model(id=model_id, project_id=self.project_id, kind="checkpoint", parent=self.model_name,
                                root=self.root, storage_key=_key(key, servable, path),
                                is_adapter=servable.is_adapter, job_id=self.job_id, step=step, settings=settings))
                add_event(s, self.job_id, f"Checkpoint saved at step {step}: {model_id}",
                          data={"step": step, "model": model_id, **_jsonable(metrics)})
            return True

        if not retry_db(write, f"registering checkpoint {step}"):
            return
        self._forget_rotated()

    def _forget_rotated(self) -> None:
        """Checkpoints the trainer rotated away are no longer listed or servable."""
        def write() -> None:
            with session_scope() as s:
                for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)):
                    m = s.get(Model, c.model_id)
                    if m is not None and not self.storage.exists(m.storage_key):
                        s.delete(m)
                        s.delete(c)

        retry_db(write, "forgetting rotated checkpoints")

    def control(self):
        """"cancel", "pause" or None for the trainer. A user's cancel (requested, or the job already
        cancelled) is "cancel"; a job that is no longer ours (requeued, owned by another worker, finished by
        someone else) is abandoned: the trainer also hears "cancel", and `abandoned` tells the runner to
        record nothing."""
        if self.abandoned:
            return "cancel"
        now = time.monotonic()
        if now - self._last_control_check >= 0.5:
            self._last_control_check = now

            def read():
                with session_scope() as s:
                    job = s.get(FineTuningJob, self.job_id)
                    if job is not None and job.status == "cancelled":
                        return "cancel"
                    if not self.owns(job):
                        self._abandon(job)
                        return "cancel"
                    return job.requested if job.requested in ("cancel", "pause") else None

            self._control = retry_db(read, "reading the job's control request")
        return self._control


def _inject(fault: str) -> None:
    """A real torch failure inside the training loop (see workers.runner.FAULT_ENV)."""
    import torch

    if fault == "oom":
        torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: the allocator refuses it
    elif fault == "bug":
        torch.zeros(2, 3) @ torch.zeros(2, 3)  # a shape mismatch, as a library bug would raise
    elif fault == "library_valueerror":  # a ValueError from inside a library, not about the user's data
        torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(5, dtype=torch.long))
    raise AssertionError(f"unknown fault {fault!r}")


def _key(checkpoint_key: str, servable: Servable, checkpoint: Path) -> str:
    rel = servable.folder.relative_to(checkpoint).as_posix()
    return checkpoint_key if rel == "." else f"{checkpoint_key}/{rel}"


def _jsonable(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and math.isnan(v):  # NaN is not JSON
            v = None
        elif isinstance(v, Path):
            v = str(v)
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out
