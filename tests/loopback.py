"""A real multi-node Ray cluster on one machine, for the tests of what survives losing a node.

The nodes are separate `ray start` processes with their own temp dirs, bound to the loopback
address 127.0.0.2. Not 127.0.0.1: Ray 2.60 rewrites 127.0.0.1 and localhost in an address to the
machine's interface address, where nothing listens, and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which
stops that rewrite) makes `ray start --address` refuse to add a node. Any other address of the
loopback range is left alone, so every process here, nodes and drivers, talks over loopback only.
Everything started here is stopped by process id: each node is the process tree of its
`ray start --block`; `ray stop` would also stop other people's clusters on the machine.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import psutil
import ray

LOOPBACK = "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))


TAKEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same twice: the OS may hand out a port again until it is bound."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in TAKEN:
            TAKEN.add(port)
            return port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


class Node:
    """One `ray start --block` and every process it spawned (raylet, agents, workers)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "w") as out:
            self.process = subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[int]:
        """SIGKILL the whole tree at once, as when a machine dies; the pids that were killed."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=20)
        self.process.wait(timeout=20)
        return [p.pid for p in processes]


class LoopbackCluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.nodes = root, env, []
        self.address = f"{LOOPBACK}:{free_port()}"

    def node_args(self, name: str, cpus: int) -> list[str]:
        ports = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")
        return [
            f"--node-ip-address={LOOPBACK}",
            f"--temp-dir={self.root / name}",
            f"--num-cpus={cpus}",
            "--object-store-memory=300000000",
            "--disable-usage-stats",
            *(f"--{port}={free_port()}" for port in ports),
        ]

    def start_head(self, cpus: int = 1) -> Node:
        port = int(self.address.rsplit(":", 1)[1])
        args = ["--head", f"--port={port}", f"--ray-client-server-port={free_port()}", "--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={free_port()}"]
        head = self._start("head", [*args, *self.node_args("head", cpus)], self.env)
        wait_for(lambda: listening(port) or head.process.poll() is not None, "the head's GCS", timeout=60)
        assert head.process.poll() is None, f"ray start --head exited:\n{(self.root / 'head.log').read_text()[-3000:]}"
        return head

    def add_node(self, name: str, cpus: int = 1, env: dict[str, str] | None = None) -> Node:
        return self._start(name, [f"--address={self.address}", *self.node_args(name, cpus)], env or self.env)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        node = Node(args, env, self.root / f"{name}.log")
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()


def alive_nodes() -> dict[str, str]:
    """node id -> raylet socket (which lies under the node's temp dir) of every alive node."""
    return {n["NodeID"]: n["RayletSocketName"] for n in ray.nodes() if n["Alive"]}


def wait_for(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def node_id_of(temp_dir: Path, timeout: float = 180) -> str:
    return wait_for(lambda: next((i for i, socket in alive_nodes().items() if socket.startswith(f"{temp_dir}/")), None), f"the node in {temp_dir} to join", timeout)


def fsg(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "fsg_ray.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def s3_keys(endpoint: str, bucket: str, prefix: str, credentials: dict[str, str] | None = None) -> set[str]:
    keys = {k.lower(): v for k, v in (credentials or {}).items()}
    listed = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for item in listed.get("Contents", [])}


def node_env(**extra: str) -> dict[str, str]:
    """The environment of node processes and drivers: this one's (S3 endpoint and credentials included), no usage stats."""
    # A raylet gives up on its dashboard agent after agent_register_timeout_ms; a loaded machine starts one slowly.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_agent_register_timeout_ms": "300000", **extra}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def connect(address: str, timeout: float = 180) -> None:
    """ray.init against a head whose GCS listens but whose raylet may not have registered yet (a loaded machine takes minutes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.init(address=address)
            return
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@contextmanager
def two_nodes(env: dict[str, str], head_cpus: int = 1, second_cpus: int = 1) -> Iterator[LoopbackCluster]:
    """A head and a second node, this process connected to them; everything stopped (by pid) on exit."""
    root = Path(tempfile.mkdtemp(prefix="fsg-mn-"))  # short: Ray's socket paths must fit in 107 bytes
    cluster = LoopbackCluster(root, env)
    try:
        cluster.start_head(head_cpus)
        cluster.add_node("second", second_cpus)
        connect(cluster.address)
        for name in ("head", "second"):
            node_id_of(root / name)
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
