"""Session-wide test infrastructure: a real S3 endpoint on loopback, and Ray settings for CI.

S3 is moto's HTTP server in its own process, not in-process `mock_aws`: Ray workers and pyarrow's
C++ S3 client only talk to a real endpoint.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import boto3
import pytest

from fsg_ray.ray.cluster import free_port

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _wait_until_serving(endpoint: str, server: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            with open(log_path) as log:
                raise RuntimeError(f"moto server exited with {server.returncode}:\n{log.read()}")
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # a loaded box answers after the 1 s timeout
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer on {endpoint} within 30 s (log: {log_path})")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1; the AWS_* variables point at it for the whole session."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path_factory.mktemp("moto") / "server.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(endpoint, server, log_path)
        with pytest.MonkeyPatch.context() as env:
            for name, value in {
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                env.setenv(name, value)
            yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, uniquely named, empty bucket on the session's S3 server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def unreachable_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on loopback where nothing answers (a bound port that never listens refuses connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, value in {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture(scope="module")
def no_vanilla_lpips_backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty torchvision cache: vanilla LPIPS's backbone is absent, so which metric keys appear is certain."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("no-weights")))
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny source generator as a field-format file, one per test module."""
    from tiny import write_tiny_source

    return write_tiny_source(tmp_path_factory.mktemp("source") / "source.pt")


# The CI run of 2026-12-06 (1 failed, 669 passed) ended in a segmentation fault after pytest had printed its
# summary, in the interpreter's teardown of the native libraries (Ray, torch), and make saw 139 instead of
# pytest's status. Leave with pytest's own status once everything is reported; the Ray clusters the tests
# started are shut down by their fixtures before this point.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status and os.environ.get("CI") == "true":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
