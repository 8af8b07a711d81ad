"""DeepSpeed ZeRO configuration, the single-process environment it needs, and multi-GPU launch commands.

Owns the translation DeepSpeedSettings -> a DeepSpeed config dict for the HF Trainer (batch sizes,
clipping and precision left "auto" so the Trainer fills them), the RANK/WORLD_SIZE/... variables a
single process needs (without them the Trainer looks for mpi4py), and the command line a worker uses to
run the same recipe on several GPUs. It does not start processes itself.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from ml.config import DeepSpeedSettings

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "chatforge" / "torch_extensions"


def deepspeed_config(ds: DeepSpeedSettings) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # The final save must hold real weights, not ZeRO-3 shards.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    cfg: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if ds.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if ds.stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's own (JIT-compiled) CPU Adam.
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_env(extensions_dir: str | Path | None = None) -> dict[str, str]:
    """Set the torch.distributed variables for a one-process run where a launcher did not; returns what was set.

    Also points TORCH_EXTENSIONS_DIR at a cache we control: DeepSpeed JIT-compiles its CPU ops
    (30-40 s each) the first time and reuses them from there.
    """
    wanted = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "TORCH_EXTENSIONS_DIR": str(extensions_dir or DEFAULT_EXTENSIONS_DIR),
    }
    done = {}
    for k, v in wanted.items():
        if not os.environ.get(k):
            os.environ[k] = v
            done[k] = v
    Path(os.environ["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    return done


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_launch_command(
    n_gpus: int,
    job_args: list[str],
    launcher: str = "accelerate",
    main_process_port: int | None = None,
) -> list[str]:
    """argv that runs `python -m ml.train.launch <job_args>` on n_gpus GPUs of this host.

    job_args are ml.train.launch's own arguments (--config, --base-model, --train-file, ...). Every
    rank runs run_supervised; only rank 0 reports to the sink (events file) and polls its control.
    n_gpus == 1 gives a plain python command.
    """
    module = ["-m", "ml.train.launch", *job_args]
    if n_gpus <= 1:
        return [sys.executable, *module]
    port = str(main_process_port or _free_port())
    if launcher == "accelerate":
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(n_gpus),
            "--num_machines",
            "1",
            "--main_process_port",
            port,
            *module,
        ]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n_gpus),
            *module,
        ]
    if launcher == "deepspeed":
        return [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(n_gpus),
            "--master_port",
            port,
            "--module",
            "ml.train.launch",
            *job_args,
        ]
    raise ValueError(f"unknown launcher {launcher!r}; expected accelerate, torchrun or deepspeed")


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
