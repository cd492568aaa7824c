"""The endpoint's latency while a node is lost, against a baseline run in the same process on the same cluster.

A two-node Ray cluster on loopback (tests/loopback.py): the head (2 CPUs) holds Serve's
only HTTP proxy, the gateway and one generator replica, the second node (1 CPU) the other replica. N
closed-loop clients (tests/closed_loop.py) POST /generate for 1 image each: first for `--seconds` with both
nodes (baseline), then again, killing the second node's processes (SIGKILL, by pid) `--kill-after` s in.
Rows: the baseline; the loss (requests in flight between the kill and the moment the GCS marks the node
dead, when Serve stops routing to it); after (the head's replica alone).

    python bench/serve_node_loss.py                  # toy-faces model (64 px), 8 clients, 30 s per run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from closed_loop import ClosedLoop, Sent, percentile  # noqa: E402
from loopback import LOOPBACK, LoopbackCluster, alive_nodes, free_port, wait_for  # noqa: E402

from fsg_ray.serve.app import build_app  # noqa: E402

HEAD_CPUS = 2  # the gateway (0.5) and one generator (1): the second generator goes to the second node
APP = "fsg"


def row(phase: str, sent: list[Sent], seconds: float) -> str:
    ok = [s for s in sent if s.ok]
    worst = max((s.latency_ms for s in ok), default=float("nan"))
    return f"| {phase} | {len(sent)} | {len(sent) - len(ok)} | {percentile(sent, 50):.0f} | {percentile(sent, 99):.0f} | {worst:.0f} | {len(ok) / seconds:.1f} |"


def app_running() -> bool:
    status = serve.status().applications.get(APP)
    return status is not None and status.status == "RUNNING"


def deploy(app_args: dict, generator_replicas: int) -> None:
    app = build_app({**app_args, "generator_replicas": generator_replicas})
    serve.run_many([serve.RunTarget(app, name=APP, route_prefix="/")], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", default="toy:faces")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--kill-after", type=float, default=10.0, help="seconds into the second run when the second node is killed")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fsg-bn-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = LoopbackCluster(root, env)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    try:
        cluster.start_head(cpus=HEAD_CPUS)
        ray.init(address=cluster.address, log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": port})
        app_args = {"model_uris": {"bench": args.model_uri}, "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}}
        # One generator first, so that the gateway is placed on the head; the second goes to the second node.
        deploy(app_args, 1)
        wait_for(app_running, "the gateway and one generator on the head", timeout=300)
        cluster.add_node("second", cpus=1)
        second = wait_for(lambda: next((i for i, sock in alive_nodes().items() if sock.startswith(f"{root / 'second'}/")), None), "the second node to join", timeout=300)
        deploy(app_args, 2)
        wait_for(lambda: app_running() and serve.status().applications[APP].deployments["Generator"].replica_states.get("RUNNING", 0) == 2,
                 "both generator replicas", timeout=300)
        with ClosedLoop(url, "bench", clients=args.clients) as warm:
            warm.wait_for(4 * args.clients, timeout_s=300)  # both replicas have loaded the model

        with ClosedLoop(url, "bench", clients=args.clients) as baseline:
            time.sleep(args.seconds)
        with ClosedLoop(url, "bench", clients=args.clients) as loss:
            started = time.monotonic()
            time.sleep(args.kill_after)
            killed_at = time.monotonic()
            cluster.nodes[1].kill()
            wait_for(lambda: second not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, "the GCS to mark the second node dead", timeout=120)
            dead_at = time.monotonic()
            time.sleep(max(0.0, started + args.seconds - time.monotonic()))
            ended = time.monotonic()
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    before = [s for s in loss.sent if s.ended < killed_at]
    during = loss.between(killed_at, dead_at)
    after = [s for s in loss.sent if s.started > dead_at]
    print(f"\nmodel {args.model_uri}, {args.clients} closed-loop clients, 1 image per request, 2 generator replicas (1 CPU each) on 2 loopback nodes, "
          f"second node killed {args.kill_after:g} s into the run; the GCS marked it dead {dead_at - killed_at:.1f} s after the kill")
    print("| phase | requests | failed | p50 ms | p99 ms | max ms | answered/s |")
    print("|---|---|---|---|---|---|---|")
    print(row("baseline, both nodes (no loss)", baseline.sent, args.seconds))
    print(row("loss run, before the kill", before, killed_at - started))
    print(row("loss run, kill -> node marked dead", during, dead_at - killed_at))
    print(row("loss run, after (head's replica alone)", after, ended - dead_at))
    print(row("loss run, whole run", loss.sent, ended - started))


if __name__ == "__main__":
    main()
