"""Join the Ray cluster at RAY_ADDRESS, or start a local one; check that every node reaches the run's storage.

Processes on a joined cluster run in their node's environment, not the driver's: the endpoint of S3
is forwarded to them (it says where the data is), credentials never are (each node brings its own:
an instance role, a Kubernetes Secret, the environment of its `ray start`).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fsg_ray import storage

# Where S3 is, not who may use it; that it answered, so that workers wait out an outage (storage.py), and
# for how long: the retry window set for the job on the driver holds for its workers too.
FORWARDED_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", storage.ANSWERED_ENV, storage.RETRY_ENV)
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")
# How S3 (AWS, MinIO, moto) says that the caller's credentials are not valid.
REFUSALS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "credentials")


class NodeStorageError(storage.StorageError):
    """A node of the cluster cannot use the run's storage; the message names the node and its environment."""


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for a local cluster, Serve, a test server)."""
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
    port = free_port()
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
        # Every task and actor of this job (Train workers, Tune trials, synthesis actors) gets the endpoint.
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": forwarded_env()})
        return
    start_local(max(os.cpu_count() or 1, math.ceil(min_cpus)))


def storage_problem(uri: str) -> str | None:
    """None when this process can use `uri`, else one line saying why not, naming this node and its environment.

    The environment is described by the names of the AWS credential variables it sets, never their values.
    """
    try:
        storage.exists(uri)
        return None
    except Exception as exc:  # pyarrow raises OSError subclasses, storage its own errors: all are reported
        reason = str(exc).strip().splitlines()[0].rstrip(".")
    node = f"node {ray.util.get_node_ip_address()} (id {ray.get_runtime_context().get_node_id()[:12]})"
    present = [k for k in CREDENTIAL_ENV if os.environ.get(k)]
    if present and not any(word in reason for word in REFUSALS):
        return f"{node} cannot use {uri}: {reason}"
    has = f"sets {', '.join(present)}" if present else f"has none of {', '.join(CREDENTIAL_ENV[:2])} set"
    return (
        f"{node} cannot use {uri}: {reason}. That node's environment {has}: workers run in the environment "
        f"of their node's `ray start` (on Kubernetes: the pod's Secret references), not the driver's; "
        f"give that node valid credentials or an instance role"
    )


@ray.remote(num_cpus=0)
def _storage_problem_here(uri: str) -> str | None:
    return storage_problem(uri)


def check_nodes_reach(uris: Iterable[str]) -> None:
    """Ask every alive node whether it can use each object-store URI; one error listing every refusal.

    Runs before any training starts, so that a node without credentials fails the run with one line
    instead of a worker's stack of ACCESS_DENIED traces at its first checkpoint.
    """
    remote = [uri for uri in dict.fromkeys(uris) if storage.is_remote(uri)]
    if not remote:
        return
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    probes = [
        _storage_problem_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(uri)
        for node in nodes
        for uri in remote
    ]
    problems = [problem for problem in ray.get(probes) if problem]
    if problems:
        raise NodeStorageError("\n".join(problems))
