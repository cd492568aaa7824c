"""Sustained load on the Serve endpoint: errors, latency and the replicas' memory, window by window.

N closed-loop clients (default 8) send POST /v1/models/{model}/generate back to back for --minutes
(default 30) against the generator replicas of a local cluster, every request with fresh seeds. Per
window (default 5 minutes): requests, errors (anything but a 200 with the images asked for), p50 and
p99 latency, images/s, and each replica's resident memory (RSS) at the window's end. The baseline is
the first window: each later window's p99 and RSS are printed as a ratio of it, so a leak or a
slowdown shows as a ratio that climbs. Run it on an idle box; the numbers go to bench/RESULTS.md.

    python bench/serve_soak.py                          # 30 minutes, 8 clients, 1 replica, toy-faces model
    python bench/serve_soak.py --minutes 2 --window-minutes 1   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psutil
import ray
import requests
from ray import serve

from fsg_ray.ray.cluster import free_port
from fsg_ray.serve.app import build_app, cpus_needed
from fsg_ray.serve.settings import settings_from_dict

WARM_UP = 5  # requests that load the model before the clock starts


@dataclass
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rss_mb: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def replica_pids() -> list[int]:
    """The generator replicas' process ids: the local cluster is this process's descendants, and Ray titles
    an actor's process `ray::ServeReplica:<app>:<deployment>`."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith("ray::ServeReplica:fsg:Generator"):
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)


def rss_mb(pids: list[int]) -> list[float]:
    return [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]


def soak(url: str, model: str, clients: int, images_per_request: int, minutes: float, window_s: float, pids: list[int]) -> list[Window]:
    """Closed loop for `minutes`; each answer is booked in the window its request started in."""
    windows = [Window() for _ in range(max(1, round(minutes * 60 / window_s)))]
    lock = threading.Lock()
    counter = iter(range(10**12))
    started = time.monotonic()
    deadline = started + len(windows) * window_s

    def client() -> None:
        session = requests.Session()
        while (now := time.monotonic()) < deadline:
            with lock:
                index = next(counter)
            window = windows[min(int((now - started) // window_s), len(windows) - 1)]
            body = {"count": images_per_request, "start": 10**6 + index * images_per_request}
            sent = time.perf_counter()
            try:
                answer = session.post(f"{url}/v1/models/{model}/generate", json=body, timeout=120)
                ok = answer.status_code == 200 and len(answer.json()["images"]) == images_per_request
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - sent) * 1000
            with lock:
                if ok:
                    window.latencies_ms.append(elapsed)
                else:
                    window.errors += 1

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        for index, window in enumerate(windows):
            time.sleep(max(0.0, started + (index + 1) * window_s - time.monotonic()))
            window.rss_mb = rss_mb(pids)
            print(f"window {index + 1}/{len(windows)}: {len(window.latencies_ms)} ok, {window.errors} errors, p99 {window.percentile(99):.0f} ms, RSS {[f'{m:.0f}' for m in window.rss_mb]} MB", flush=True)
        for future in futures:
            future.result()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", default="toy:faces", help="run, checkpoint or shipped model to serve (default toy:faces, 64 px)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window-minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()

    app_args = {"model_uris": {"bench": args.model_uri}, "generator_replicas": args.replicas, "limits": {"request_timeout_s": 120}}
    http_port = free_port()
    ray.init(address="local", num_cpus=max(2, int(cpus_needed(settings_from_dict(dict(app_args))) + 1)), object_store_memory=10**9,
             include_dashboard=False, log_to_driver=False)
    url = f"http://127.0.0.1:{http_port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(app_args), name="fsg", route_prefix="/")
        session = requests.Session()
        for seed in range(WARM_UP):
            session.post(f"{url}/v1/models/bench/generate", json={"count": 1, "start": seed}, timeout=300).raise_for_status()
        pids = replica_pids()
        if len(pids) != args.replicas:
            raise RuntimeError(f"found {len(pids)} generator replica processes ({pids}), expected {args.replicas}")
        start_rss = rss_mb(pids)
        windows = soak(url, "bench", args.clients, args.images_per_request, args.minutes, args.window_minutes * 60, pids)
    finally:
        serve.shutdown()
        ray.shutdown()

    first = windows[0]
    print(f"\n{datetime.date.today()}, {platform.machine()}, {psutil.cpu_count()} CPUs, load average at the end {psutil.getloadavg()[0]:.1f}; "
          f"model {args.model_uri}, {args.replicas} replica(s), {args.clients} clients, {args.images_per_request} image(s)/request, "
          f"{args.minutes:g} min in windows of {args.window_minutes:g} min; RSS after warm-up {[f'{m:.0f}' for m in start_rss]} MB")
    print("| window (min) | requests ok | errors | p50 ms | p99 ms | images/s | p99 / first window's | RSS MB per replica | RSS / after warm-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index, w in enumerate(windows):
        span = f"{index * args.window_minutes:g}-{(index + 1) * args.window_minutes:g}"
        growth = ", ".join(f"{end / begin:.3f}" for begin, end in zip(start_rss, w.rss_mb, strict=True))
        print(f"| {span} | {len(w.latencies_ms)} | {w.errors} | {w.percentile(50):.0f} | {w.percentile(99):.0f} | "
              f"{len(w.latencies_ms) * args.images_per_request / (args.window_minutes * 60):.1f} | {w.percentile(99) / first.percentile(99):.2f} | "
              f"{', '.join(f'{m:.0f}' for m in w.rss_mb)} | {growth} |")
    print(f"total errors: {sum(w.errors for w in windows)} of {sum(len(w.latencies_ms) + w.errors for w in windows)} requests")


if __name__ == "__main__":
    main()
