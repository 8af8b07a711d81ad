"""The narrow channel through which ML code reports progress and learns it should stop.

Recipes never touch a database: they call a JobSink. The worker implements it on top of the job
tables; PrintSink serves a Python shell or a test. Control is polled once per optimizer step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Protocol

Control = Literal["cancel", "pause"] | None


class JobSink(Protocol):
    def log(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        """A human-readable event ("epoch 2 started", "checkpoint saved at step 40")."""

    def metrics(self, step: int, values: dict[str, float], total_steps: int | None = None) -> None:
        """Numbers for one step: train_loss, learning_rate, tokens_per_second, valid_loss, ..."""

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """A complete checkpoint now exists at `path` (already atomically in place)."""

    def control(self) -> Control:
        """"cancel" or "pause" when the user asked the job to stop; None to keep going."""


class PrintSink:
    """JobSink for a shell or a test: prints and remembers everything."""

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.logs: list[tuple[str, dict[str, Any] | None]] = []
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, Path, dict[str, float]]] = []
        self.stop: Control = None
        self.started = time.monotonic()

    def log(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.logs.append((message, data))
        if self.verbose:
            print(f"[{level}] {message}")

    def metrics(self, step: int, values: dict[str, float], total_steps: int | None = None) -> None:
        self.steps.append((step, dict(values)))
        if self.verbose:
            print(f"step {step}/{total_steps or '?'} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, Path(path), dict(metrics)))

    def control(self) -> Control:
        return self.stop
