"""The real crash: a training process is SIGKILLed mid-run; a new process resumes from the newest complete
checkpoint, continues the step count, and ends with the same adapter as a run that was never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ml.config import SupervisedConfig
from ml.train.launch import read_events
from ml.train.sft import run_supervised
from tests.ml.train.conftest import StopAtSink

ROOT = Path(__file__).resolve().parents[3]
CONFIG = {
    "n_epochs": 3,
    "batch_size": 4,
    "learning_rate": 2e-2,
    "bf16": False,
    "warmup_ratio": 0.0,
    "checkpoint_interval": 4,
    "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
}


def launch(tiny_model_path, train: Path, out: Path, cfg_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ml.train.launch",
            "--config",
            str(cfg_path),
            "--base-model",
            str(tiny_model_path),
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_then_resume(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(CONFIG))
    out = tmp_path / "run"
    events = out / "events.jsonl"

    proc = launch(tiny_model_path, train, out, cfg_path)
    killed_at = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            evs = read_events(events)
            ckpts = [e["step"] for e in evs if e["type"] == "checkpoint"]
            steps = [e["step"] for e in evs if e["type"] == "metrics"]
            # Kill between checkpoints, after some progress past the second one.
            if len(ckpts) >= 2 and steps and steps[-1] >= ckpts[-1] + 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = steps[-1]
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
    assert proc.wait(60) == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert killed_at is not None and killed_at < 24
    assert not (out / "model").exists()
    before = len(read_events(events))
    saved = max(e["step"] for e in read_events(events) if e["type"] == "checkpoint")

    proc = launch(tiny_model_path, train, out, cfg_path)
    assert proc.wait(300) == 0, proc.stderr.read().decode()[-3000:]
    after = read_events(events)[before:]
    messages = [e["message"] for e in after if e["type"] == "log"]
    assert any(m.startswith(f"Training resumed at step {saved} of 24") for m in messages), messages
    resumed_steps = [e["step"] for e in after if e["type"] == "metrics"]
    assert resumed_steps[0] == saved + 1 and resumed_steps[-1] == 24
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded" and result["steps"] == 24

    # Same run never killed, in this process: identical adapter.
    ref = run_supervised(
        SupervisedConfig.from_dict(CONFIG), tiny_model_path, train, None, tmp_path / "ref", StopAtSink()
    )
    assert result["trained_tokens"] == ref.trained_tokens
    a = load_file(ref.model_dir / "adapter_model.safetensors")
    b = load_file(Path(result["model_dir"]) / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
