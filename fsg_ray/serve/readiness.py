"""`fsg serve` waits for its replicas to run, and fails naming the missing resources instead of waiting forever.

Serve itself waits for a replica that no node can hold (it only logs that the replica "has taken more than
30s to be scheduled"); on a cluster that autoscales that is right, so the wait is bounded by a setting
(`ready_timeout_s`) rather than refused at once.
"""

from __future__ import annotations

import time

import ray
from ray import serve
from ray.serve.schema import ApplicationStatusOverview

from fsg_ray.config import ConfigError

POLL_S = 1.0
RUNNING = "RUNNING"


class ReplicasNotPlaced(ConfigError):
    """The application's replicas did not all start within the bound; the message says what they lack."""


def amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in resources.items()) or "nothing"


def unplaced(
    needs: dict[str, tuple[int, dict[str, float]]], running: dict[str, int], free: dict[str, float], total: dict[str, float]
) -> str:
    """What the application asks against what the cluster has: the resources missing in all, else which replicas do not run.

    Counted against the cluster's totals, not per replica: a replica that is placed but still starting
    holds its resources, so the free amount alone would blame it.
    """
    asked: dict[str, float] = {}
    for replicas, each in needs.values():
        for key, value in each.items():
            if value > 0:
                asked[key] = asked.get(key, 0.0) + replicas * value
    parts = "; ".join(f"{name}: {replicas} x {amounts({k: v for k, v in each.items() if v > 0})}" for name, (replicas, each) in needs.items())
    has = {key: total.get(key, 0.0) for key in asked}
    short = {key: value - has[key] for key, value in asked.items() if has[key] < value}
    line = f"the application asks {amounts(asked)} ({parts}); the cluster has {amounts(has)} in all"
    if short:
        return f"{line}: missing {amounts(short)}"
    waiting = ", ".join(f"{name} {running.get(name, 0)} of {replicas}" for name, (replicas, _) in needs.items() if running.get(name, 0) < replicas)
    return (
        f"{line}, {amounts({key: free.get(key, 0.0) for key in asked})} free, yet not all replicas run ({waiting} running): "
        "no single node holds one, other jobs hold the resources, or the replicas are slow to start"
    )


def running_replicas(status: ApplicationStatusOverview | None) -> dict[str, int]:
    if status is None:
        return {}
    return {name: deployment.replica_states.get(RUNNING, 0) for name, deployment in status.deployments.items()}


def wait_until_running(app_name: str, needs: dict[str, tuple[int, dict[str, float]]], timeout_s: float) -> None:
    """Return once the application runs; raise ReplicasNotPlaced after `timeout_s`, or at once if Serve gave up on it."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == RUNNING:
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise ReplicasNotPlaced(f"the application failed to deploy: {status.message}")
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    detail = unplaced(needs, running_replicas(status), ray.available_resources(), ray.cluster_resources())
    raise ReplicasNotPlaced(
        f"not ready after {timeout_s:g} s (ready_timeout_s): {detail}. Add nodes, or ask for fewer generator_replicas or gpus_per_replica"
    )
