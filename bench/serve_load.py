"""Closed-loop load on the Serve endpoint over loopback: latency percentiles, images/s, errors, batching on vs off.

N client threads each send POST /v1/models/{model}/generate back to back (a fixed total request
count, distinct seeds per request) against one generator replica. Each row is compared with the raw
generator in this process at the batch the server could form (clients x images per request), with
as many torch threads as the replica has CPUs, both as forward only and as forward + PNG encoding
(the work the server must do per image). The mean served batch is read from the endpoint's own
`fsg_batch_images` histogram on Ray's Prometheus endpoint.

    python bench/serve_load.py                       # CPU rows, toy-faces model (64 px)
    python bench/serve_load.py --gpus-per-replica 1  # GPU rows: the replica renders on its GPU
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import ray
import requests
import torch
from ray import serve

from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.ray.cluster import free_port
from fsg_ray.serve.app import build_app
from fsg_ray.serve.rendering import encode, render


WARM_UP = 5  # requests that load the model before a row is timed


@dataclass(frozen=True)
class Row:
    mode: str
    clients: int
    images_per_request: int
    requests: int
    latencies_ms: list[float]
    wall_s: float
    errors: int
    mean_batch: float

    @property
    def images_per_s(self) -> float:
        return (self.requests - self.errors) * self.images_per_request / self.wall_s

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def metric_total(metrics_url: str, name: str) -> float:
    text = requests.get(metrics_url, timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def forwards_after(metrics_url: str, images: int, timeout: float = 30) -> float:
    """Batched forwards so far, once Ray's metrics report includes all `images` rendered so far."""
    deadline = time.monotonic() + timeout
    while metric_total(metrics_url, "ray_fsg_batch_images_sum") < images and time.monotonic() < deadline:
        time.sleep(0.5)
    return metric_total(metrics_url, "ray_fsg_batch_images_count")


def run_load(url: str, model: str, clients: int, images_per_request: int, total: int) -> tuple[list[float], float, int]:
    """Closed loop: each client sends its next request when the previous answer arrived."""
    next_request = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                index = next(next_request, None)
            if index is None:
                return
            body = {"count": images_per_request, "start": 1000 + index * images_per_request}
            started = time.perf_counter()
            answer = session.post(f"{url}/v1/models/{model}/generate", json=body, timeout=120)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if answer.status_code == 200 and len(answer.json()["images"]) == images_per_request:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return latencies, time.perf_counter() - started, errors[0]


def raw_images_per_s(model_uri: str, batch: int, encode_png: bool, device: str, repeats: int = 20) -> float:
    sampler, _ = load_sampler(model_uri, device)
    sampler.requires_grad_(False)
    seeds = list(range(batch))
    render(sampler, seeds, 1.0, "const", torch.device(device))  # warm-up (and the truncation mean, not used at 1.0)
    started = time.perf_counter()
    for _ in range(repeats):
        images = render(sampler, seeds, 1.0, "const", torch.device(device))
        if encode_png:
            [encode(image, "png", None) for image in images]
    return batch * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", default="toy:faces", help="run, checkpoint or shipped model to serve (default toy:faces, 64 px)")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--images-per-request", default="1,4")
    parser.add_argument("--requests", type=int, default=160, help="requests per row")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    sizes = [int(s) for s in args.images_per_request.split(",")]
    device = "cuda" if args.gpus_per_replica else "cpu"

    metrics_port, http_port = free_port(), free_port()
    ray.init(address="local", num_cpus=4, num_gpus=1 if args.gpus_per_replica else 0, object_store_memory=10**9, include_dashboard=False,
             _metrics_export_port=metrics_port, _system_config={"metrics_report_interval_ms": 1000}, log_to_driver=False)
    url, metrics_url = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    rows: list[Row] = []
    rendered = 0  # images through the batched path so far: the histogram's sum once reported
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        modes = {
            f"on, wait {args.batch_wait_ms:g} ms": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000},
            "on, no wait": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": 0.0},  # batches of what queued during the last forward
            "off": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
        }
        for mode, batch in modes.items():
            app_args = {"model_uris": {"bench": args.model_uri}, "gpus_per_replica": args.gpus_per_replica, "batch": batch,
                        "limits": {"max_images_per_request": max(sizes), "request_timeout_s": 300}}
            serve.run(build_app(app_args), name="fsg", route_prefix="/")
            run_load(url, "bench", 1, 1, WARM_UP)
            rendered += WARM_UP
            for n in sizes:
                for c in clients:
                    forwards_before = forwards_after(metrics_url, rendered)
                    latencies, wall, errors = run_load(url, "bench", c, n, args.requests)
                    rendered += (args.requests - errors) * n
                    mean_batch = (args.requests - errors) * n / max(forwards_after(metrics_url, rendered) - forwards_before, 1)
                    rows.append(Row(mode, c, n, args.requests, latencies, wall, errors, mean_batch))
                    print(f"batching {mode}, clients={c} images/request={n}: {rows[-1].images_per_s:.1f} images/s", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    torch.set_num_threads(1)  # as many as the replica's 1 CPU gives it (Ray sets OMP_NUM_THREADS=1)
    raw: dict[tuple[int, bool], float] = {}
    for batch in sorted({r.clients * r.images_per_request for r in rows} | set(sizes)):
        for with_png in (False, True):
            raw[batch, with_png] = raw_images_per_s(args.model_uri, batch, with_png, device)

    print(f"\nmodel {args.model_uri}, device {device}, {args.requests} requests per row, max_batch_size {args.max_batch_size}, batch wait {args.batch_wait_ms} ms")
    print("| batching | clients | images/req | p50 ms | p95 ms | p99 ms | images/s | errors | mean batch | raw fwd images/s (batch B) | raw fwd+png images/s | served / raw fwd+png |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r.clients * r.images_per_request
        print(f"| {r.mode} | {r.clients} | {r.images_per_request} | {r.percentile(50):.0f} | {r.percentile(95):.0f} | {r.percentile(99):.0f} | "
              f"{r.images_per_s:.1f} | {r.errors} | {r.mean_batch:.1f} | {raw[b, False]:.1f} (B={b}) | {raw[b, True]:.1f} | {r.images_per_s / raw[b, True]:.2f} |")
    print()
    for mode in modes:
        for n in sizes:
            lone = next(r for r in rows if r.mode == mode and r.clients == min(clients) and r.images_per_request == n)
            for c in clients:
                row = next(r for r in rows if r.mode == mode and r.clients == c and r.images_per_request == n)
                off = next(r for r in rows if r.mode == "off" and r.clients == c and r.images_per_request == n)
                print(f"batching {mode}, {n} images/request, {c} clients: images/s vs batching off {row.images_per_s / off.images_per_s:.2f}x; "
                      f"p99 / p99 of {min(clients)} client {row.percentile(99) / lone.percentile(99):.2f}")


if __name__ == "__main__":
    main()
