"""This machine's processing resources, as a run sizes itself to them: physical cores and torch threads."""

from __future__ import annotations

import math
import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores this process may run on: CPUs in its affinity mask, hyper-threads of one core counted
    once, (socket, core) pairs so that two sockets' equal core ids are not merged, capped by a cgroup CPU quota
    (a container limited to 4 CPUs of a 64-core host must not start 32 threads). One thread per physical core:
    matmul threads sharing a core only contend."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = len(allowed)
    try:
        cores, cpu, socket = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu, socket = int(value), "0"
                elif key == "physical id":
                    socket = value
                elif key == "core id" and cpu in allowed:
                    cores.add((socket, value))
        n = len(cores) or n
    except (OSError, ValueError):
        pass
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_threads() -> int:
    """Physical cores shared among the processes of this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores() // max(local, 1))
