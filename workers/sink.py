"""DBSink: the JobSink (ml.events) a training child writes through. Events, metrics, checkpoints and
progress go straight into the job tables, so any API replica can show them; control() reads the
user's cancel/pause request."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chatforge.db.models import Checkpoint, FineTuningJob, Model, utcnow
from chatforge.db.session import session_scope
from chatforge.jobstate import add_event
from chatforge.storage import Storage
from ml.train.servable import Servable
from workers.dbretry import retry_db


class DBSink:
    """`export` turns a raw trainer checkpoint into its servable form (ml.train.servable); each
    checkpoint is registered as a model of that kind, so its id serves the weights it holds."""

    def __init__(self, job_id: str, storage: Storage, model_name: str, root: str, parent: str,
                 project_id: str, export: Callable[[Path], Servable] | None = None) -> None:
        self.job_id, self.storage = job_id, storage
        self.model_name, self.root, self.parent, self.project_id = model_name, root, parent, project_id
        self.export = export
        self.fault: str | None = None  # workers.runner.FAULT_ENV, tests only
        self._t0: float | None = None
        self._step0 = 0
        self._last_control_check = 0.0
        self._control = None

    def log(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        def write() -> None:
            with session_scope() as s:
                add_event(s, self.job_id, message, level=level, data=_jsonable(data))

        retry_db(write, "logging an event")

    def metrics(self, step: int, values: dict[str, float], total_steps: int | None = None) -> None:
        if self.fault:
            _inject(self.fault)
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._step0 = now, step - 1
        def write() -> None:
            with session_scope() as s:
                job = s.get(FineTuningJob, self.job_id)
                job.step = max(job.step or 0, step)
                if total_steps:
                    job.total_steps = total_steps
                done = step - self._step0
                if total_steps and done > 0:
                    per_step = (now - self._t0) / done
                    job.estimated_finish = utcnow() + timedelta(seconds=per_step * max(0, total_steps - step))
                if "num_tokens" in values:
                    job.trained_tokens = int(values["num_tokens"])
                data = {"step": step, "total_steps": total_steps, **_jsonable(values)}
                parts = [f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, (int, float))]
                add_event(s, self.job_id, f"Step {step}/{total_steps or '?'}: " + ", ".join(parts),
                          type="metrics", data=data)

        retry_db(write, f"recording step {step}")

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
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
        now = time.monotonic()
        if now - self._last_control_check >= 0.5:
            self._last_control_check = now

            def read():
                with session_scope() as s:
                    job = s.get(FineTuningJob, self.job_id)
                    return job.requested if job.requested in ("cancel", "pause") else (
                        "cancel" if job.status not in ("running",) else None)

            self._control = retry_db(read, "reading the job's control request")
        return self._control


def _inject(fault: str) -> None:
    """A real torch failure inside the training loop (see workers.runner.FAULT_ENV)."""
    import torch

    if fault == "oom":
        torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: the allocator refuses it
    elif fault == "bug":
        torch.zeros(2, 3) @ torch.zeros(2, 3)  # a shape mismatch, as a library bug would raise
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
