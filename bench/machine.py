"""The machine a benchmark ran on, printed beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """Return the CPU model name (from /proc/cpuinfo on Linux, else what `platform` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(server_version: str | None = None, **extra: str) -> dict[str, str]:
    """Return CPU, cores, memory, OS, Python and (when given) PostgreSQL version, plus `extra` rows."""
    import psutil

    info = {
        "CPU": cpu_model(),
        "cores (logical)": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }
    if server_version is not None:
        info["PostgreSQL"] = server_version
    info.update(extra)
    return info
