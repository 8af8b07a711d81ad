"""`chatforge jobs watch`: follow a job's event stream until it stops. On a terminal a rich progress bar
(step/total, loss, validation loss, tokens/s, ETA, learning rate) with the job's other events printed above
it; piped, one plain line per step, so logs and scripts read the same text. The ETA is the worker's
(`estimated_finish` on the job), falling back to the bar's own estimate until the worker has one.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import httpx2 as httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.text import Text

from chatforge.client.output import duration, stdout
from chatforge.client.server import ClientError, Server

TERMINAL = ("succeeded", "failed", "cancelled")


def metric_parts(data: dict[str, Any], eta: float | None) -> list[str]:
    """["loss 1.2345", "val 1.3012", "305 tok/s", "ETA 0:00:14", "lr 1.20e-04"], learning rate last (it is
    the first thing cut on a narrow terminal)."""
    parts = []
    loss = data.get("train_loss", data.get("policy_loss"))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if data.get("valid_loss") is not None:
        parts.append(f"val {data['valid_loss']:.4f}")
    if data.get("tokens_per_second") is not None:
        parts.append(f"{data['tokens_per_second']:.0f} tok/s")
    parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA -")
    if data.get("learning_rate") is not None:
        parts.append(f"lr {data['learning_rate']:.2e}")
    return parts


def _bar(step: int, total: int | None, width: int = 20) -> str:
    if not total:
        return ""
    done = min(width, round(width * step / total))
    return f"[{'█' * done}{'░' * (width - done)}] {100 * step / total:3.0f}%"


def progress_line(data: dict[str, Any], eta: float | None) -> str:
    """`step 12/20  [████░░] 60%  loss 1.2345  val 1.3012  305 tok/s  ETA 0:00:14  lr 1.20e-04`"""
    step, total = data.get("step"), data.get("total_steps")
    return "  ".join(p for p in [f"step {step}/{total or '?'}", _bar(step, total), *metric_parts(data, eta)] if p)


class _MetricsColumn(ProgressColumn):
    """The latest step's numbers; the ETA counts down between events."""

    def render(self, task: Task) -> Text:
        eta_at = task.fields.get("eta_at")
        eta = eta_at - time.time() if eta_at else task.time_remaining if task.fields.get("running") else None
        return Text("  ".join(metric_parts(task.fields.get("data") or {}, eta)))


class _LiveView:
    """A rich progress bar on the console, events printed above it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("step {task.fields[step_label]}/{task.fields[total_label]}"), BarColumn(),
                                 TaskProgressColumn(), _MetricsColumn(), console=console)
        self.task = self.progress.add_task("", total=None, step_label="-", total_label="?", data={}, eta_at=None,
                                           running=False)
        self.progress.start()

    def step(self, data: dict[str, Any], eta_at: float | None, running: bool) -> None:
        total = data.get("total_steps")
        self.progress.update(self.task, completed=data["step"], total=total, step_label=data["step"],
                             total_label=total or "?", data=data, eta_at=eta_at, running=running)

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


class _PlainView:
    """One line per step and per event (a pipe, a log file)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def step(self, data: dict[str, Any], eta_at: float | None, running: bool) -> None:
        self.message(progress_line(data, eta_at - time.time() if eta_at and running else None))

    def message(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def watch(srv: Server, job_id: str, console: Console | None = None) -> int:
    """Follow a job's events until it stops; 0 when it succeeded, 1 otherwise."""
    console = console or stdout()
    path = f"/fine_tuning/jobs/{job_id}"
    job = srv.request("GET", path)
    fetched = time.monotonic()
    view = _LiveView(console) if console.is_terminal else _PlainView(console.file)
    last_id, retries = None, 0
    try:
        while True:
            try:
                for name, data in srv.events(job_id, after=last_id):
                    if name == "done":
                        break
                    last_id = data["id"]
                    if data.get("type") == "metrics" and data.get("data", {}).get("step") is not None:
                        # ETA and status come from the job row: every 2 s, sooner while it has no ETA yet
                        age = time.monotonic() - fetched
                        if age > 2 or (age > 0.25 and not job.get("estimated_finish")):
                            job, fetched = srv.request("GET", path), time.monotonic()
                        running = job["status"] == "running"
                        view.step(data["data"], job.get("estimated_finish") if running else None, running)
                    else:
                        view.message(f"· {data['message']}")
            except (httpx.HTTPError, ClientError) as e:
                retries += 1
                if retries > 5:
                    raise ClientError(f"lost the event stream: {e}") from None
                time.sleep(2)
                continue
            job = srv.request("GET", path)
            if job["status"] in TERMINAL or job["status"] == "paused":
                break
    finally:
        view.close()
    result = f" -> {job['fine_tuned_model']}" if job.get("fine_tuned_model") else ""
    error = f": {job['error'].get('message')}" if job.get("error") and job["error"].get("message") else ""
    console.file.write(f"job {job_id} {job['status']}{result}{error}\n")
    console.file.flush()
    return 0 if job["status"] == "succeeded" else 1
