"""Closed-loop clients on the endpoint, as bench/serve_load.py drives it: each sends its next request when the last answered.

Every request is recorded with its start and end times, so a test or bench can split them around an event
(a node killed) and count failures or read latency percentiles per window.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests


@dataclass(frozen=True)
class Sent:
    started: float  # time.monotonic()
    ended: float
    status: int  # HTTP status; 0 when no answer came (connection error, client timeout)
    ok: bool  # 200 with as many images as asked for
    detail: str  # the error body, for a failure

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000


class ClosedLoop:
    """`clients` threads POSTing /v1/models/{model}/generate for `images` distinct seeds each, until stopped."""

    def __init__(self, url: str, model: str, clients: int = 8, images: int = 1, timeout_s: float = 120):
        self.url, self.model, self.clients, self.images, self.timeout_s = url, model, clients, images, timeout_s
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seeds = itertools.count(10_000, images)
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> ClosedLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            with self._lock:
                start = next(self._seeds)
            started = time.monotonic()
            try:
                answer = session.post(f"{self.url}/v1/models/{self.model}/generate", json={"count": self.images, "start": start}, timeout=self.timeout_s)
                good = answer.status_code == 200 and len(answer.json()["images"]) == self.images
                sent = Sent(started, time.monotonic(), answer.status_code, good, "" if good else answer.text[:300])
            except (requests.RequestException, ValueError) as exc:
                sent = Sent(started, time.monotonic(), 0, False, f"{type(exc).__name__}: {exc}"[:300])
            with self._lock:
                self.sent.append(sent)

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def wait_for(self, n: int, timeout_s: float) -> None:
        """Until `n` requests in all have been answered (or failed)."""
        deadline = time.monotonic() + timeout_s
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.count()} of {n} requests answered in {timeout_s:.0f} s")
            time.sleep(0.2)

    def between(self, start: float, end: float) -> list[Sent]:
        """Requests in flight at any time within [start, end]."""
        with self._lock:
            return [s for s in self.sent if s.started <= end and s.ended >= start]


def percentile(sent: list[Sent], q: float) -> float:
    latencies = [s.latency_ms for s in sent if s.ok]
    return float(np.percentile(latencies, q)) if latencies else float("nan")
