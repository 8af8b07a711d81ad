"""What this worker can run (cpu, cuda), declared in the workers table and used to pick queues."""

from __future__ import annotations

import os
import socket

from chatforge.queue import QUEUE_ANY, QUEUE_CUDA


def detect(setting: str) -> tuple[list[str], int | None]:
    if setting == "cpu":
        return ["cpu"], None
    try:
        import torch

        has_cuda = torch.cuda.is_available()
        mem = int(torch.cuda.get_device_properties(0).total_memory // 2**20) if has_cuda else None
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        has_cuda, mem = False, None
    if setting == "cuda" and not has_cuda:
        raise SystemExit("CHATFORGE_WORKER_CAPABILITIES=cuda but no CUDA device is visible")
    return (["cpu", "cuda"] if has_cuda else ["cpu"]), mem


def queues_for(caps: list[str]) -> list[str]:
    return [QUEUE_ANY, QUEUE_CUDA] if "cuda" in caps else [QUEUE_ANY]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
