"""CPU seconds used by the twin's processes: a round's cost that a loaded machine does not hide.

On a shared 2-core machine the wall time of a round mostly measures the other jobs; the CPU
time of the driver and of every Ray process of the run (found by the run's environment
tag) is what the round itself costs. Linux only (/proc); elsewhere it reads 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.process import TAG_ENV, tagged

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def run_cpu_seconds() -> float:
    """CPU seconds so far of this process and of the processes carrying this run's tag."""
    total = _process_cpu(os.getpid())
    tags = os.environ.get(TAG_ENV, "")
    twin_tags = [t for t in tags.split(":") if t.startswith("twin-")]
    if twin_tags:
        for pid in tagged(twin_tags[-1]):
            total += _process_cpu(pid)
    return total
