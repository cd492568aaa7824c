"""The endpoint on a real two-node loopback cluster: a node lost under load, a node rejoining, S3 going away.

One cluster for the module (tests/loopback.py): the head (2 CPUs) holds Serve's
controller and only HTTP proxy, the gateway and one generator replica; the second node (1 CPU) joins once
those run, and the generator is then scaled to two replicas, so the second node holds exactly the second. Both nodes reach S3 through
tests/outage.py's proxy, which a test can cut. The tests run in file order and share the cluster:
the one that needs a cluster too small for its config comes before the endpoint is deployed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray
import requests
from closed_loop import ClosedLoop, percentile
from loopback import LOOPBACK, LoopbackCluster, alive_nodes, free_port, node_id_of, wait_for
from outage import OutageProxy, outage_proxy
from ray import serve
from ray.util.state import list_actors
from serve_fixtures import write_tiny_run

from fsg_ray.serve.app import build_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HEAD_CPUS = 2  # the gateway (0.5) and one generator (1): a second generator does not fit
APP = "fsg"


@pytest.fixture(scope="module")
def s3_proxy(s3_endpoint: str) -> Iterator[OutageProxy]:
    with outage_proxy(s3_endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def model_root(s3_endpoint: str) -> str:
    bucket = f"serve-loss-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    for seed, name in enumerate(("m0", "m1", "m2")):
        write_tiny_run(f"s3://{bucket}/runs/{name}", seed, "toy:faces")
    return f"s3://{bucket}/runs"


@pytest.fixture(scope="module")
def cluster(s3_proxy: OutageProxy) -> Iterator[LoopbackCluster]:
    """The head alone at first; the nodes' S3 is the outage proxy."""
    root = Path(tempfile.mkdtemp(prefix="fsg-sl-"))  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "AWS_ENDPOINT_URL_S3": s3_proxy.endpoint, "AWS_ENDPOINT_URL": s3_proxy.endpoint}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    cluster = LoopbackCluster(root, env)
    try:
        cluster.start_head(cpus=HEAD_CPUS)
        ray.init(address=cluster.address)
        node_id_of(root / "head")
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def joined(cluster: LoopbackCluster, name: str, timeout: float = 300) -> str:
    """The id of the node started as `name`, once it has joined (a loaded box takes minutes to start one)."""
    temp_dir = cluster.root / name
    log = cluster.root / f"{name}.log"
    what = f"the node {name} to join"
    try:
        return wait_for(lambda: next((i for i, sock in alive_nodes().items() if sock.startswith(f"{temp_dir}/")), None), what, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log ends:\n{log.read_text()[-2000:]}") from None


def replica_nodes(cluster: LoopbackCluster, deployment: str) -> list[str]:
    """Node ids of the alive replicas of a deployment of the app."""
    actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    return sorted(a.node_id for a in actors if a.class_name == f"ServeReplica:{APP}:{deployment}")


def running(deployment: str) -> int:
    status = serve.status().applications.get(APP)
    deployments = status.deployments if status is not None else {}
    return deployments[deployment].replica_states.get("RUNNING", 0) if deployment in deployments else 0


def app_running() -> bool:
    status = serve.status().applications.get(APP)
    return status is not None and status.status == "RUNNING"


@pytest.mark.timeout(240)
def test_fsg_serve_on_a_joined_cluster_too_small_for_its_config_fails_naming_the_missing_cpus(cluster: LoopbackCluster, model_root: str, tmp_path: Path) -> None:
    """Two generator replicas and the gateway ask 2.5 CPUs of a 2-CPU cluster: an error, not a wait forever."""
    config = tmp_path / "serve.yaml"
    config.write_text(f"models: {model_root}\ngenerator_replicas: 2\nready_timeout_s: 20\n")
    started = time.monotonic()
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    run = subprocess.run(
        [sys.executable, "-m", "fsg_ray.cli", "serve", "--config", str(config), "--address", cluster.address, "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=200,
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("fsg serve: error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-3000:]
    assert "not ready after 20 s (ready_timeout_s): the application asks CPU 2.5 (Generator: 2 x CPU 1; Gateway: 1 x CPU 0.5)" in errors[0], errors[0]
    assert "the cluster has CPU 2 in all: missing CPU 0.5" in errors[0], errors[0]
    print(f"\nfsg serve failed after {time.monotonic() - started:.0f} s: {errors[0]}")


@pytest.fixture(scope="module")
def endpoint(cluster: LoopbackCluster, model_root: str) -> Iterator[str]:
    """The app with a generator replica on each node and the gateway on the head; its URL (the head's proxy)."""
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": port})
    try:
        args = {
            "models": model_root,
            "failed_load_ttl_s": 1.0,
            "listing_ttl_s": 60.0,
            "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
            "limits": {"request_timeout_s": 60, "retry_after_s": 3},
        }
        head = node_id_of(cluster.root / "head")
        # One generator first, so that the gateway is placed on the head; the second one, added once the second
        # node is there, can only go there (the head has 0.5 CPU left). Scaling restarts neither.
        deploy(args, generator_replicas=1)
        wait_for(app_running, "the gateway and one generator on the head", timeout=300)
        cluster.add_node("second", cpus=1)
        second = joined(cluster, "second")
        deploy(args, generator_replicas=2)
        wait_for(lambda: running("Generator") == 2 and app_running(), "the second generator replica", timeout=300)
        assert replica_nodes(cluster, "Gateway") == [head] and sorted(replica_nodes(cluster, "Generator")) == sorted([head, second])
        yield f"http://{LOOPBACK}:{port}"
    finally:
        serve.shutdown()


def deploy(args: dict, generator_replicas: int) -> None:
    app = build_app({**args, "generator_replicas": generator_replicas})
    serve.run_many([serve.RunTarget(app, name=APP, route_prefix="/")], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


def gateway_log(cluster: LoopbackCluster) -> str:
    logs = (cluster.root / "head" / "session_latest" / "logs" / "serve").glob(f"replica_{APP}_Gateway_*.log")
    return "".join(path.read_text(errors="replace") for path in logs)


@pytest.mark.timeout(420)
def test_every_request_is_served_while_the_second_node_is_killed_under_load(cluster: LoopbackCluster, endpoint: str) -> None:
    """8 closed-loop clients; the second node dies by SIGKILL: calls on its replica are retried on the head's, none fails."""
    second = node_id_of(cluster.root / "second")
    with ClosedLoop(endpoint, "m0", clients=8) as load:
        load.wait_for(40, timeout_s=180)  # both replicas have the model and answer
        killed_at = time.monotonic()
        assert cluster.nodes[1].kill()
        wait_for(lambda: second not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, "the GCS to mark the second node dead", timeout=120)
        dead_at = time.monotonic()
        load.wait_for(load.count() + 40, timeout_s=180)  # and the endpoint goes on with the head's replica alone
    during = load.between(killed_at, dead_at)
    failed = [s for s in load.sent if not s.ok]
    before = [s for s in load.sent if s.ended < killed_at]
    print(f"\n{len(load.sent)} requests, {len(during)} in flight between the kill and the node marked dead ({dead_at - killed_at:.1f} s); "
          f"p50/p99 ms before {percentile(before, 50):.0f}/{percentile(before, 99):.0f}, during {percentile(during, 50):.0f}/{percentile(during, 99):.0f}")
    assert not failed, f"{len(failed)} of {len(load.sent)} failed, first: {failed[0].status} {failed[0].detail}"
    assert during, "requests were in flight while the node was lost"
    assert "retrying on another replica" in gateway_log(cluster), "some call was on the dead replica and was retried"


@pytest.mark.timeout(300)
def test_a_generator_replica_comes_back_when_a_node_joins_again(cluster: LoopbackCluster, endpoint: str) -> None:
    cluster.add_node("second-again", cpus=1)
    again = joined(cluster, "second-again")
    head = node_id_of(cluster.root / "head")
    wait_for(lambda: running("Generator") == 2, "a second generator replica", timeout=240)
    assert sorted(replica_nodes(cluster, "Generator")) == sorted([head, again])
    answer = requests.post(f"{endpoint}/v1/models/m0/generate", json={"count": 2, "start": 0}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["images"]) == 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "model"), [("refuse", "m1"), ("hang", "m2")])
def test_a_model_not_yet_loaded_is_503_json_during_an_s3_outage_and_served_after(endpoint: str, s3_proxy: OutageProxy, kind: str, model: str) -> None:
    getattr(s3_proxy, kind)()
    try:
        started = time.monotonic()
        answer = requests.get(f"{endpoint}/v1/models/{model}/images/1.png", timeout=120)
        waited = time.monotonic() - started
    finally:
        s3_proxy.restore()
    assert answer.status_code == 503, answer.text[:500]
    error = answer.json()["error"]
    assert error["code"] == "model_unavailable" and error["field"] == "model" and f"'{model}' cannot be loaded" in error["message"], error
    assert answer.headers["Retry-After"] == "3" and waited < 60
    print(f"\n{kind}: 503 after {waited:.1f} s")

    def served() -> bool:
        return requests.get(f"{endpoint}/v1/models/{model}/images/1.png", timeout=60).status_code == 200

    wait_for(served, f"{model} to be served after the outage", timeout=60)
