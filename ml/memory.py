"""How many bytes a device could hand out now: for deciding whether an optional copy (a cache, a merged
snapshot of weights) fits beside the work already running."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def available_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA: the free bytes the driver reports for the device. CPU: MemAvailable (free memory plus the
    page cache the kernel could reclaim without swapping)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
