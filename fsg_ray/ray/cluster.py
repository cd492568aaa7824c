"""Join the Ray cluster at RAY_ADDRESS, or start a local one."""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import ray

GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local(num_cpus: int, **init_kwargs: Any) -> None:
    """Start a new local cluster whose own processes know its address.

    Ray Train's placement-group cleaner finds the cluster through the State API, which, without
    RAY_ADDRESS, auto-detects "the" cluster on the machine and fails when there are several (another
    user's, a test's): the placement group of a trial that Tune stopped is then never freed and the
    next trial waits forever. So the GCS port is chosen here and RAY_ADDRESS is set in the environment
    the cluster's processes inherit, then the driver's own environment is restored.
    """
    # "local" starts a new cluster: without it ray.init joins whatever `ray start` left on this machine.
    # The dashboard stays on: Ray Train's placement-group cleaner polls the State API it serves.
    port = _free_port()
    saved = {name: os.environ.get(name) for name in (GCS_PORT_ENV, "RAY_ADDRESS")}
    os.environ[GCS_PORT_ENV], os.environ["RAY_ADDRESS"] = str(port), f"127.0.0.1:{port}"
    try:
        ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(min_cpus: float = 1) -> None:
    """Connect once per process. A local cluster gets at least `min_cpus` logical CPUs, so that N one-CPU
    workers start on a machine with fewer cores (they then share them, which is fine for small runs)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    start_local(max(os.cpu_count() or 1, math.ceil(min_cpus)))
