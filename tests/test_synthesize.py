"""`fsg synthesize` on a real local Ray cluster writing to S3 (moto): read back, determinism, kill and resume, bad inputs."""

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import numpy as np
import pyarrow.dataset as pads
import pytest
import ray
from PIL import Image
from tiny import TINY, tiny_source, write_tiny_source

from fsg_ray import cli, storage
from fsg_ray.grids import seeded_z
from fsg_ray.nets.checkpoints import CheckpointError, write_checkpoint
from fsg_ray.ray.synthesize import synthesize
from fsg_ray.synth.manifest import MANIFEST_FILE, DatasetMismatch
from fsg_ray.synth.options import DatasetOptions, Scaling, SynthError
from fsg_ray.synth.shards import inspect_shard, parse_shard_name

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two different tiny generators: the adapted one and the source it is paired with."""
    root = tmp_path_factory.mktemp("generators")
    return write_tiny_source(root / "adapted.pt", seed=1), write_tiny_source(root / "source.pt", seed=0)


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint: str) -> Iterator[str]:
    """One local cluster for the module, started after the AWS variables point at the loopback S3; yields its address."""
    ray.init(address="local", num_cpus=4, object_store_memory=10**9, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def paired_options(generators: tuple[str, str], **overrides) -> DatasetOptions:
    # seed_start 5 cuts the render blocks, so every shard edge renders padding seeds.
    fields = {"generator": generators[0], "pair_with": generators[1], "count": 40, "seed_start": 5, "shard_rows": 16, "with_latents": True}
    return DatasetOptions(**{**fields, **overrides})


@pytest.fixture(scope="module")
def paired_dataset(ray_cluster: str, s3_endpoint: str, generators: tuple[str, str]) -> str:
    name = "synth-shared"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    out = f"s3://{name}/datasets/paired"
    synthesize(paired_options(generators), out, Scaling(workers=2, batch=16), progress=False)
    return out


def shard_bytes(out: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(out, name)) for name in storage.list_dir(out) if name.endswith(".parquet")}


def read_table(out: str):
    filesystem, path = storage.resolve(out)
    return pads.dataset(path, filesystem=filesystem, format="parquet").to_table()


@pytest.mark.ray
def test_paired_dataset_reads_back_with_pyarrow(paired_dataset: str, generators: tuple[str, str]) -> None:
    table = read_table(paired_dataset).sort_by("seed")
    assert table.column("seed").to_pylist() == list(range(5, 45))
    image, source = table.column("image")[0].as_py(), table.column("source_image")[0].as_py()
    assert image["path"] == "0000000005.png" and Image.open(io.BytesIO(image["bytes"])).size == (32, 32)
    assert image["bytes"] != source["bytes"]
    assert np.allclose(table.column("z").to_pylist(), seeded_z(list(range(5, 45)), 16).numpy())
    assert set(table.column("model").to_pylist()) == {generators[0]}


@pytest.mark.ray
def test_manifest_lists_every_shard_with_rows_and_sha256(paired_dataset: str) -> None:
    import hashlib
    import json

    manifest = json.loads(storage.read_bytes(storage.join(paired_dataset, MANIFEST_FILE)))
    objects = shard_bytes(paired_dataset)
    assert [(s["file"], s["rows"]) for s in manifest["shards"]] == [(name, parse_shard_name(name)[1] - parse_shard_name(name)[0]) for name in sorted(objects)]
    assert all(s["sha256"] == hashlib.sha256(objects[s["file"]]).hexdigest() for s in manifest["shards"])
    assert manifest["options"]["truncation"] == 1.0 and manifest["scaling"]["workers"] == 2 and len(manifest["generator"]["sha256"]) == 64


@pytest.mark.ray
def test_paired_dataset_decodes_as_images_in_hugging_face_datasets(paired_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    for name, data in shard_bytes(paired_dataset).items():
        (tmp_path / name).write_bytes(data)
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(loaded.features["image"], datasets.Image) and isinstance(loaded.features["source_image"], datasets.Image)
    assert loaded[0]["image"].size == (32, 32)


@pytest.mark.ray
def test_ray_data_and_pandas_read_the_dataset(paired_dataset: str) -> None:
    import pandas

    filesystem, path = storage.resolve(paired_dataset)
    assert ray.data.read_parquet(path, filesystem=filesystem).count() == 40
    assert sorted(pandas.read_parquet(path, filesystem=filesystem)["seed"]) == list(range(5, 45))


@pytest.mark.ray
def test_one_worker_writes_the_same_bytes_as_two(paired_dataset: str, generators: tuple[str, str], s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/one-worker"
    synthesize(paired_options(generators), out, Scaling(workers=1, batch=48), progress=False)
    assert shard_bytes(out) == shard_bytes(paired_dataset)


@pytest.mark.ray
def test_rerun_of_a_complete_dataset_writes_nothing(paired_dataset: str, generators: tuple[str, str]) -> None:
    summary = synthesize(paired_options(generators), paired_dataset, Scaling(workers=1), progress=False)
    assert (summary.written_shards, summary.shards, summary.images) == (0, 3, 40)


@pytest.mark.ray
def test_rerun_with_another_generator_or_options_refuses_and_names_the_difference(paired_dataset: str, generators: tuple[str, str]) -> None:
    before = shard_bytes(paired_dataset)
    with pytest.raises(DatasetMismatch, match=r"options\.truncation: 1\.0 in the dataset, 0\.7 asked"):
        synthesize(paired_options(generators, truncation=0.7), paired_dataset, progress=False)
    with pytest.raises(DatasetMismatch, match=r"generator\.sha256"):
        synthesize(paired_options(generators[::-1]), paired_dataset, progress=False)
    assert shard_bytes(paired_dataset) == before


@pytest.mark.ray
def test_cli_shows_progress_with_rate_and_eta_and_a_closing_summary(ray_cluster: str, generators: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["synthesize", "--generator", generators[0], "--count", "32", "--shard-rows", "16", "--out", str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert "32/32 [" in captured.err and "img/s]" in captured.err and "<" in captured.err.split("32/32 [")[1]
    assert "32 images in 2 shards" in captured.out and "2 shards written by this run" in captured.out


def wait_for_first_shard(out: str, driver: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited with {driver.returncode} before writing a shard:\n{driver.stdout.read()}")
        if any(name.endswith(".parquet") for name in storage.list_dir(out)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no shard at {out} after {timeout} s")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_killed_job_rerun_finishes_identical_to_an_uninterrupted_run(ray_cluster: str, s3_bucket: str) -> None:
    options = DatasetOptions(generator="toy:faces", count=320, shard_rows=16, noise="seeded")
    killed, reference = f"s3://{s3_bucket}/killed", f"s3://{s3_bucket}/reference"
    command = [sys.executable, "-m", "fsg_ray.cli", "synthesize", "--generator", "toy:faces", "--count", "320", "--shard-rows", "16",
               "--noise", "seeded", "--out", killed, "--workers", "1", "--quiet"]  # fmt: skip
    driver = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": ray_cluster}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_first_shard(killed, driver)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    present = [parse_shard_name(name) for name in storage.list_dir(killed) if name.endswith(".parquet")]
    assert not storage.exists(storage.join(killed, MANIFEST_FILE)), "the job finished before it was killed: nothing was interrupted"
    assert all(inspect_shard(killed, start, end) is not None for start, end in present), "a shard object appeared incomplete"

    resumed = synthesize(options, killed, Scaling(workers=1), progress=False)
    synthesize(options, reference, Scaling(workers=1), progress=False)
    assert resumed.written_shards == 20 - len(present) < 20
    assert shard_bytes(killed) == shard_bytes(reference)


def s3_keys(bucket: str) -> list[str]:
    return [item.key for item in boto3.resource("s3").Bucket(bucket).objects.all()]


def test_zero_count_is_refused_by_name_and_writes_nothing(s3_bucket: str, capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["synthesize", "--generator", "toy:faces", "--count", "0", "--out", f"s3://{s3_bucket}/ds"])
    assert code == 2 and "count: expected a positive number of images, got 0" in capsys.readouterr().err
    assert s3_keys(s3_bucket) == []


def test_unreadable_generator_is_refused_by_file_and_writes_nothing(s3_bucket: str, tmp_path: Path) -> None:
    garbage = tmp_path / "generator.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(garbage)):
        synthesize(DatasetOptions(generator=str(garbage), count=4), f"s3://{s3_bucket}/ds", progress=False)
    assert s3_keys(s3_bucket) == []


@pytest.mark.ray
def test_more_workers_than_the_cluster_holds_is_refused_instead_of_waiting(ray_cluster: str, s3_bucket: str) -> None:
    with pytest.raises(SynthError, match="workers: 4 generator actors need 5 CPU"):
        synthesize(DatasetOptions(generator="toy:faces", count=4), f"s3://{s3_bucket}/ds", Scaling(workers=4), progress=False)
    assert s3_keys(s3_bucket) == []


def test_pairing_generators_that_take_different_z_is_refused(generators: tuple[str, str], tmp_path: Path) -> None:
    other = tmp_path / "wide.pt"
    write_checkpoint(str(other), tiny_source(model=replace(TINY, style_dim=32)))
    with pytest.raises(SynthError, match="pair_with: .* takes z of 32 values"):
        synthesize(DatasetOptions(generator=generators[0], pair_with=str(other), count=4), str(tmp_path / "ds"), progress=False)
    assert not (tmp_path / "ds").exists()


def test_missing_bucket_is_refused_by_name(s3_endpoint: str) -> None:
    with pytest.raises(storage.BucketNotFound, match="no-such-bucket"):
        synthesize(DatasetOptions(generator="toy:faces", count=4), "s3://no-such-bucket/ds", progress=False)
