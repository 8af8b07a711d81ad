"""Command-line entry for a supervised run in its own process (single process, or one rank of a multi-process
launch from ml.train.distributed.build_launch_command), talking to its parent through files.

Owns FileSink: events appended as JSON lines to a file, control read from a small file the parent
writes ("cancel" or "pause"). It does not know about jobs or databases; the parent tails the events.
Rank 0 writes OUT/result.json on success and OUT/error.json when the run raised (what kind of error, so
the parent can report a data or settings problem as such).

    python -m ml.train.launch --config cfg.json --base-model DIR --train-file train.jsonl \
        --output-dir OUT [--valid-file valid.jsonl] [--events OUT/events.jsonl] [--control OUT/control] \
        [--die-with-parent]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ml.events import Control


class FileSink:
    """JobSink over two files: JSON-lines events out, a one-word control file in."""

    def __init__(self, events_path: str | Path, control_path: str | Path) -> None:
        self.events_path = Path(events_path)
        self.control_path = Path(control_path)
        self.events_path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self._write({"type": "log", "level": level, "message": message, "data": data})

    def metrics(self, step: int, values: dict[str, float], total_steps: int | None = None) -> None:
        self._write({"type": "metrics", "step": step, "values": values, "total_steps": total_steps})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self._write({"type": "checkpoint", "step": step, "path": str(path), "metrics": metrics})

    def control(self) -> Control:
        try:
            word = self.control_path.read_text().strip()
        except FileNotFoundError:
            return None
        return word if word in ("cancel", "pause") else None  # type: ignore[return-value]


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Parse a FileSink events file (a torn last line from a killed process is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def die_with_parent(sig: int) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (no orphaned ranks)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux
        pass


def describe_error(e: BaseException) -> dict[str, Any]:
    """What the parent needs to report a rank's failure: its kind (data, config, oom, other) and words."""
    import torch

    from ml.config import ConfigError
    from ml.records import DataError

    if isinstance(e, ConfigError):
        return {"kind": "config", "param": e.param, "message": e.message}
    if isinstance(e, DataError):
        return {"kind": "data", "message": str(e)}
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return {"kind": "oom", "message": f"{type(e).__name__}: {e}"}
    return {"kind": "other", "message": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ml.train.launch", description="Run one supervised fine-tune."
    )
    ap.add_argument("--config", required=True, help="JSON file with SupervisedConfig fields")
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--train-file", required=True)
    ap.add_argument("--valid-file")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--events", help="events JSONL (default OUTPUT/events.jsonl)")
    ap.add_argument("--control", help="control file (default OUTPUT/control)")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--die-with-parent", action="store_true",
                    help="Linux: this process is killed when its parent (the launcher) dies")
    a = ap.parse_args(argv)
    if a.die_with_parent:
        die_with_parent(signal.SIGKILL)

    from ml.config import SupervisedConfig
    from ml.train.sft import run_supervised

    out = Path(a.output_dir)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    sink = FileSink(a.events or out / "events.jsonl", a.control or out / "control")
    try:
        cfg = SupervisedConfig.from_dict(json.loads(Path(a.config).read_text()))
        result = run_supervised(
            cfg,
            Path(a.base_model),
            Path(a.train_file),
            Path(a.valid_file) if a.valid_file else None,
            out,
            sink,
            resume=not a.no_resume,
        )
    except Exception as e:
        if main_rank:
            (out / "error.json").write_text(json.dumps(describe_error(e)))
        raise
    if main_rank:
        summary = {
            "status": result.status,
            "model_dir": str(result.model_dir) if result.model_dir else None,
            "adapter": result.adapter,
            "steps": result.steps,
            "total_steps": result.total_steps,
            "trained_tokens": result.trained_tokens,
            "metrics": result.metrics,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "config": result.config.to_dict() if result.config else None,
            "runtime": result.runtime,
        }
        (out / "result.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written (events are fsynced per line, result.json is complete). Leave without the
    # interpreter's teardown: the native libraries of a rank (gloo, DeepSpeed's shared-memory
    # communication op) can abort in their destructors ("terminate called without an active exception",
    # SIGABRT), and torchrun would then report a finished or paused run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
