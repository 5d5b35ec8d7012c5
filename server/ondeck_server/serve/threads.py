"""How many CPUs this process may use: the default for onnxruntime's intra-op threads.

Order: the container's CPU quota (cgroup v2 `cpu.max`, else cgroup v1
`cpu.cfs_quota_us`/`cpu.cfs_period_us`), capped by the CPUs this process may run on
(`taskset`, cpusets), else the CPU count. The parsers are pure; `cpu_limit` reads the
files. This module does not configure onnxruntime itself.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>") to CPUs, None if unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` to CPUs; -1 means unlimited."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none."""
    text = _read(root / "cpu.max")
    if text is not None:
        return parse_cpu_max(text)
    for folder in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return parse_cfs(quota, period)
    return None


def available_cpus() -> int:
    """CPUs this process may be scheduled on (respects taskset and cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Whole CPUs to use: the quota rounded down (a 1.5-CPU limit gets 1 thread: threads
    past the quota only get throttled), never more than the CPUs available, at least 1."""
    cpus = available_cpus()
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)
