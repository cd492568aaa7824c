"""Join the Ray cluster at RAY_ADDRESS, or start a local one."""

from __future__ import annotations

import math
import os

import ray


def connect(min_cpus: float = 1) -> None:
    """Connect once per process. A local cluster gets at least `min_cpus` logical CPUs, so that N one-CPU
    workers start on a machine with fewer cores (they then share them, which is fine for small runs)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    # "local" starts a new cluster: without it ray.init joins whatever `ray start` left on this machine.
    # The dashboard stays on: Ray Train's placement-group cleaner polls the State API it serves.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)))
