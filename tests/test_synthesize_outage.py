"""S3 going away and coming back while `fsg synthesize` writes shards: the job carries on, or fails naming what.

S3 is the session's moto server behind tests/outage.py's proxy; the outage (connections refused, or
held unanswered) starts when the first shard appears and lasts OUTAGE_S. The drivers are `fsg
synthesize` processes joining the module's local cluster, which forwards them the endpoint and the
retry window (FSG_STORAGE_RETRY_S) as it would on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray
from outage import OutageProxy, outage_proxy

from fsg_ray.ray.synthesize import synthesize
from fsg_ray.synth.manifest import MANIFEST_FILE
from fsg_ray.synth.options import DatasetOptions, Scaling

# Caps against hangs, not durations: on the shared 2-core box under load a single job has taken 3 minutes.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

OUTAGE_S = 20.0
# Long enough that shards are still to come when S3 goes away: the shipped 64 px toy model, 4 seeds a shard.
COUNT, SHARD_ROWS = 96, 4
OPTIONS = DatasetOptions(generator="toy:faces", count=COUNT, shard_rows=SHARD_ROWS, noise="seeded")
SHARDS = COUNT // SHARD_ROWS


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str) -> Iterator[OutageProxy]:
    """The proxy, and this process's S3 endpoint set to it (the module's cluster starts after, and inherits it)."""
    with outage_proxy(s3_endpoint) as proxy, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        env.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy


@pytest.fixture(scope="module")
def cluster(proxy: OutageProxy) -> Iterator[str]:
    ray.init(address="local", num_cpus=4, object_store_memory=10**9, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(cluster: str, s3_endpoint: str) -> dict[str, bytes]:
    """Every object of the dataset made without an outage."""
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="outage-reference")
    out = "s3://outage-reference/ds"
    synthesize(OPTIONS, out, Scaling(workers=1), progress=False)
    return on_moto(s3_endpoint, "outage-reference")


def on_moto(s3_endpoint: str, bucket: str) -> dict[str, bytes]:
    """name -> bytes of every object in the bucket, read from moto itself (not through the proxy)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key.removeprefix("ds/"): s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def start_driver(cluster: str, out: str, retry_s: float, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "fsg_ray.cli", "synthesize", "--generator", "toy:faces", "--count", str(COUNT), "--shard-rows", str(SHARD_ROWS),
               "--noise", "seeded", "--workers", "1", "--out", out, "--quiet"]  # fmt: skip
    with open(log, "w") as file:
        return subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": cluster, "FSG_STORAGE_RETRY_S": str(retry_s)}, stdout=file, stderr=subprocess.STDOUT)


def outage_at_first_shard(driver: subprocess.Popen, s3_endpoint: str, bucket: str, proxy: OutageProxy, kind: str, log: Path) -> int:
    """Once a shard is on S3, take S3 away (`kind`); the number of shards then."""
    deadline = time.monotonic() + 300
    while not (shards := [n for n in on_moto(s3_endpoint, bucket) if n.endswith(".parquet")]):
        assert driver.poll() is None and time.monotonic() < deadline, f"no shard was written:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    getattr(proxy, kind)()
    assert MANIFEST_FILE not in on_moto(s3_endpoint, bucket) and len(shards) < SHARDS, "the job was done before the outage"
    return len(shards)


@pytest.mark.parametrize("kind", ["refuse", "hang"])
def test_synthesize_carries_on_through_a_storage_outage(kind: str, cluster: str, reference: dict[str, bytes], proxy: OutageProxy, s3_endpoint: str, s3_bucket: str, tmp_path: Path):
    log = tmp_path / "synthesize.log"
    started = time.monotonic()
    driver = start_driver(cluster, f"s3://{s3_bucket}/ds", 120, log)
    try:
        outage_at_first_shard(driver, s3_endpoint, s3_bucket, proxy, kind, log)
        threading.Timer(OUTAGE_S, proxy.restore).start()
        assert driver.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert time.monotonic() - started >= OUTAGE_S  # the job really waited the outage out
    assert "not answering" in log.read_text()
    assert on_moto(s3_endpoint, s3_bucket) == reference  # every shard once, whole, and the same manifest


def test_synthesize_past_the_retry_window_fails_naming_the_uri_and_a_rerun_resumes(
    cluster: str, reference: dict[str, bytes], proxy: OutageProxy, s3_endpoint: str, s3_bucket: str, tmp_path: Path
):
    out, log = f"s3://{s3_bucket}/ds", tmp_path / "synthesize.log"
    driver = start_driver(cluster, out, 3, log)
    try:
        outage_at_first_shard(driver, s3_endpoint, s3_bucket, proxy, "refuse", log)
        assert driver.wait(timeout=300) == 2, log.read_text()[-4000:]
    finally:
        proxy.restore()
        if driver.poll() is None:
            driver.kill()
    errors = [line for line in log.read_text().splitlines() if line.startswith("fsg synthesize: error:")]
    assert len(errors) == 1 and f"{out}/part-" in errors[0] and "FSG_STORAGE_RETRY_S=3" in errors[0] and "Could not connect" in errors[0], log.read_text()[-4000:]
    left = on_moto(s3_endpoint, s3_bucket)
    assert MANIFEST_FILE not in left and all(reference[name] == data for name, data in left.items() if name.endswith(".parquet"))  # nothing half-written

    summary = synthesize(OPTIONS, out, Scaling(workers=1), progress=False)
    assert 0 < summary.written_shards < SHARDS
    assert on_moto(s3_endpoint, s3_bucket) == reference
