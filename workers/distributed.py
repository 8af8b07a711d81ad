"""A supervised job on several processes: torchrun launches `python -m ml.train.launch` once per rank
(one per GPU; on CPU, gloo ranks), and this module relays between the ranks and the job.

Owns the launch (argv, environment, a process that dies with the runner), the relay (rank 0's events file
tailed into the job's DBSink: logs, metrics, checkpoints; the job's cancel/pause written to the control
file the ranks poll together), and turning the ranks' outcome back into a TrainResult or the error the
single-process path would have raised. Training itself, resume included, is ml.train.sft's, unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ml.config import ConfigError, SupervisedConfig
from ml.records import DataError
from ml.train.distributed import build_launch_command, format_command
from ml.train.launch import die_with_parent
from ml.train.sft import TrainResult

log = logging.getLogger("chatforge.distributed")
ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.5
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def gpus_here() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_for(asked: int | None, gpus: int) -> int:
    """How many ranks a job runs on this worker: what it asked for (at most one per GPU on a GPU worker),
    else every GPU, else 1."""
    if asked is None:
        return max(1, gpus)
    if gpus and asked > gpus:
        raise ConfigError("num_processes", f"asks for {asked} processes but this worker has {gpus} GPUs")
    return asked


def run_supervised_ranks(cfg: SupervisedConfig, n: int, base_model: Path, train_file: Path,
                         valid_file: Path | None, output_dir: Path, sink, *, gpus: int) -> TrainResult:
    """Run `cfg` on n ranks over output_dir (resuming from its newest checkpoint like a single process)."""
    work = output_dir / "launch"
    work.mkdir(parents=True, exist_ok=True)
    events, control = work / "events.jsonl", work / "control"
    for stale in (events, control, output_dir / "result.json", output_dir / "error.json"):
        stale.unlink(missing_ok=True)  # an earlier attempt's
    (work / "config.json").write_text(json.dumps(cfg.to_dict()))
    args = ["--config", str(work / "config.json"), "--base-model", str(base_model), "--train-file", str(train_file),
            "--output-dir", str(output_dir), "--events", str(events), "--control", str(control), "--die-with-parent"]
    if valid_file:
        args += ["--valid-file", str(valid_file)]
    argv = build_launch_command(n, args, launcher="torchrun")
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if not gpus:  # CPU ranks share the cores instead of each spinning on all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    backend = "nccl" if gpus else "gloo"
    sink.log(f"Launching {n} training processes ({backend}); the batch size is split across them.",
             data={"num_processes": n, "backend": backend, "command": format_command(argv)})
    with open(work / "ranks.log", "ab") as out:
        # the launcher gets SIGTERM when this runner dies (it stops its ranks); each rank dies with the launcher
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: die_with_parent(signal.SIGTERM))  # noqa: PLW1509
        try:
            _relay(proc, events, control, sink)
        finally:
            _stop(proc)
    return _outcome(proc.returncode, output_dir, work / "ranks.log", cfg)


def _relay(proc: subprocess.Popen, events: Path, control: Path, sink) -> None:
    offset, said = 0, None
    while True:
        finished = proc.poll() is not None
        offset = _forward(events, offset, sink)
        word = sink.control()
        if word != said:
            tmp = control.with_suffix(".tmp")
            tmp.write_text(word or "")
            tmp.replace(control)
            said = word
        if finished:
            return
        time.sleep(POLL_S)


def _forward(events: Path, offset: int, sink) -> int:
    """Relay the complete lines written since `offset`; returns the new offset."""
    try:
        with open(events, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        e = json.loads(line)
        if e["type"] == "metrics":
            sink.metrics(e["step"], e["values"], e.get("total_steps"))
        elif e["type"] == "checkpoint":
            path = Path(e["path"])
            if path.exists():  # rotated away before it was relayed: a newer one follows
                sink.checkpoint(e["step"], path, e.get("metrics") or {})
        else:
            sink.log(e["message"], level=e.get("level", "info"), data=e.get("data"))
    return offset + end


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # torchrun forwards it to the ranks and waits for them
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _outcome(returncode: int, output_dir: Path, ranks_log: Path, cfg: SupervisedConfig) -> TrainResult:
    result = output_dir / "result.json"
    if returncode == 0 and result.exists():
        r: dict[str, Any] = json.loads(result.read_text())
        return TrainResult(
            status=r["status"], model_dir=Path(r["model_dir"]) if r["model_dir"] else None, adapter=r["adapter"],
            steps=r["steps"], total_steps=r["total_steps"], trained_tokens=r["trained_tokens"],
            metrics=r["metrics"], checkpoint=Path(r["checkpoint"]) if r["checkpoint"] else None,
            config=SupervisedConfig.from_dict(r["config"]) if r.get("config") else cfg, runtime=r.get("runtime") or {})
    error = output_dir / "error.json"
    if error.exists():  # rank 0 said what went wrong: raise it as the single-process path would have
        e = json.loads(error.read_text())
        if e["kind"] == "config":
            raise ConfigError(e["param"], e["message"])
        if e["kind"] == "data":
            raise DataError(e["message"])
        if e["kind"] == "oom":
            raise MemoryError(e["message"])
        raise RuntimeError(e["message"])
    lines = ranks_log.read_text(errors="replace").splitlines() if ranks_log.exists() else []
    print("\n".join(lines[-40:]), file=sys.stderr)
    # a rank that died before it could write error.json: name its exception, not the launcher's
    errors = [ln.strip() for ln in lines if _EXCEPTION_LINE.match(ln) and "ChildFailedError" not in ln]
    cause = errors[0] if errors else " | ".join(ln.strip() for ln in lines[-3:])
    raise RuntimeError(f"the training processes exited with status {returncode} without a result: {cause[:500]}")
