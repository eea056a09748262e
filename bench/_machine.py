"""Machine description for benchmark reports (nproc, CPU model, RAM, date, torch version)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import torch


def machine() -> dict[str, str]:
    """``nproc``, CPU model (``/proc/cpuinfo``), RAM (``/proc/meminfo``), date, torch version."""
    cpu, ram = "unknown", "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            kb = int(handle.readline().split()[1])
            ram = f"{kb / 2**20:.1f} GiB"
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": ram,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": str(torch.get_num_threads())}
