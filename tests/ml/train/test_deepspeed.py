"""Full fine-tuning through DeepSpeed ZeRO on CPU (gloo, one process), each run in a fresh process so the
torch.distributed state never leaks into the test process. DeepSpeed JIT-compiles its CPU ops the first
time (minutes on a busy 2-core machine; cached under TORCH_EXTENSIONS_DIR afterwards)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ml.config import DeepSpeedSettings
from ml.train.distributed import build_launch_command, deepspeed_config
from ml.train.launch import read_events

ROOT = Path(__file__).resolve().parents[3]


def run_launch(tiny_model_path, train: Path, out: Path, cfg: dict, control: str | None = None) -> dict:
    cfg_path = out.parent / f"{out.name}.cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    out.mkdir(parents=True, exist_ok=True)
    if control:
        (out / "control").write_text(control)
    else:
        (out / "control").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    argv = build_launch_command(
        1,
        [
            "--config",
            str(cfg_path),
            "--base-model",
            str(tiny_model_path),
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
        ],
    )
    p = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def test_deepspeed_config_shapes():
    c3 = deepspeed_config(DeepSpeedSettings(stage=3, offload=True))
    assert c3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert c3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert c3["optimizer"]["type"] == "AdamW"
    c2 = deepspeed_config(DeepSpeedSettings(stage=2))
    assert "offload_optimizer" not in c2["zero_optimization"] and "optimizer" not in c2
    argv = build_launch_command(4, ["--config", "c.json"], launcher="accelerate")
    assert "--num_processes" in argv and argv[argv.index("--num_processes") + 1] == "4"
    assert argv[-3:] == ["ml.train.launch", "--config", "c.json"]
    assert build_launch_command(1, ["--x"])[1:] == ["-m", "ml.train.launch", "--x"]


def test_zero2_full_finetune(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    cfg = {
        "adapter": "full",
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "bf16": False,
        "deepspeed": {"stage": 2},
    }
    result = run_launch(tiny_model_path, train, tmp_path / "z2", cfg)
    assert result["status"] == "succeeded" and result["steps"] == 2
    model = AutoModelForCausalLM.from_pretrained(result["model_dir"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])


@pytest.mark.slow
def test_zero3_offload_pause_and_resume(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    cfg = {
        "adapter": "full",
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "bf16": False,
        "checkpoint_interval": 10,
        "deepspeed": {"stage": 3, "offload": True},
    }
    out = tmp_path / "z3"
    paused = run_launch(tiny_model_path, train, out, cfg, control="pause")
    assert paused["status"] == "paused" and paused["steps"] == 1
    assert Path(paused["checkpoint"]).name == "checkpoint-1"
    n_before = len(read_events(out / "events.jsonl"))
    done = run_launch(tiny_model_path, train, out, cfg)
    assert done["status"] == "succeeded" and done["steps"] == 4
    later = read_events(out / "events.jsonl")[n_before:]
    assert [e["step"] for e in later if e["type"] == "metrics"] == [2, 3, 4]
    model = AutoModelForCausalLM.from_pretrained(done["model_dir"])  # ZeRO-3 shards gathered on save
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    name = "model.layers.0.mlp.down_proj.weight"
    assert model.state_dict()[name].shape == base.state_dict()[name].shape
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])
