"""`fsg serve` as a user starts it: a subprocess with its own local cluster, asked over HTTP whether it is ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serve_fixtures import write_tiny_run
from tiny import write_tiny_source

from fsg_ray.ray.cluster import free_port


@pytest.mark.ray
def test_fsg_serve_sizes_its_local_cluster_for_two_replicas_and_gets_ready(tmp_path: Path) -> None:
    """Two one-CPU generator replicas and the half-CPU gateway do not fit 2 logical CPUs; the local cluster is sized for them."""
    source = write_tiny_source(tmp_path / "source.pt")
    write_tiny_run(str(tmp_path / "runs" / "m0"), 0, source)
    config = tmp_path / "serve.yaml"
    config.write_text(f"models: {tmp_path / 'runs'}\ngenerator_replicas: 2\n")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen([sys.executable, "-m", "fsg_ray.cli", "serve", "--config", str(config), "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(2)
        assert status == 200, f"never ready; exit code {server.poll()}"
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0 and "stopping" in output, output[-3000:]
