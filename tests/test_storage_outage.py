"""S3 going away and coming back while `fsg adapt` writes checkpoints: the run carries on, or fails naming what.

S3 is the session's moto server behind tests/outage.py's proxy, which refuses connections or holds them
unanswered (two kinds of outage a client meets) for OUTAGE_S, then forwards again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from outage import OutageProxy, outage_proxy
from serve_fixtures import TINY_STEP, write_tiny_run
from tiny import write_target_folder, write_tiny_source

from fsg_ray import storage
from fsg_ray.adapt.run import DirectorySink
from fsg_ray.cli import main
from fsg_ray.nets.checkpoints import read_checkpoint
from fsg_ray.serve.models import ModelLoadError, load_model

OUTAGE_S = 20.0
STEPS = 6


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutageProxy]:
    with outage_proxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy


def adapt_argv(tmp_path: Path, run: str) -> list[str]:
    source = write_tiny_source(tmp_path / "source.pt")
    shots = write_target_folder(tmp_path / "shots")
    return ["adapt", "--source", source, "--target", shots, "--out", run, "--steps", str(STEPS), "--batch", "2", "--quiet", "--set", "checkpoint_every=2", "--set", "sample_every=2"]


def outage_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, proxy: OutageProxy, kind: str, restore_after: float | None) -> None:
    """Once checkpoint_000002 is written, S3 is down (`kind`) for `restore_after` seconds (None: until the test restores it)."""
    save = DirectorySink.save_checkpoint

    def save_then_cut(sink: DirectorySink, step: int, ckpt: dict, metrics: dict) -> None:
        save(sink, step, ckpt, metrics)
        if step == 2:
            getattr(proxy, kind)()
            if restore_after is not None:
                threading.Timer(restore_after, proxy.restore).start()

    monkeypatch.setattr(DirectorySink, "save_checkpoint", save_then_cut)


@pytest.mark.parametrize("kind", ["refuse", "hang"])
def test_adapt_carries_on_through_a_storage_outage(kind: str, tmp_path: Path, s3_bucket: str, proxy: OutageProxy, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FSG_STORAGE_RETRY_S", "120")
    run = f"s3://{s3_bucket}/run"
    argv = adapt_argv(tmp_path, run)
    outage_after_first_checkpoint(monkeypatch, proxy, kind, restore_after=OUTAGE_S)
    started = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - started >= OUTAGE_S * 0.9  # the run really waited the outage out
    assert [n for n in storage.list_dir(run) if n.startswith("checkpoint_")] == ["checkpoint_000002", "checkpoint_000004", "checkpoint_000006"]
    assert read_checkpoint(storage.join(run, "checkpoint_000006", "state.pt"))["step"] == STEPS


def test_adapt_past_the_retry_window_fails_naming_the_uri_and_a_rerun_resumes(
    tmp_path: Path, s3_bucket: str, proxy: OutageProxy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("FSG_STORAGE_RETRY_S", "3")
    run = f"s3://{s3_bucket}/run"
    argv = adapt_argv(tmp_path, run)
    outage_after_first_checkpoint(monkeypatch, proxy, "refuse", restore_after=None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run}/samples/step_000004.png: write_bytes kept failing for" in err and "FSG_STORAGE_RETRY_S=3" in err and "Could not connect" in err
    proxy.restore()
    monkeypatch.undo()  # the rerun writes without an outage (and with the default retry window)
    done = [n for n in storage.list_dir(run) if n.startswith("checkpoint_")]
    assert done and all(read_checkpoint(storage.join(run, n, "state.pt"))["step"] == int(n.split("_")[1]) for n in done)  # nothing half-written
    assert main(argv) == 0
    assert read_checkpoint(run)["step"] == STEPS


def test_an_endpoint_that_never_answered_fails_at_once(tmp_path: Path, unreachable_s3_endpoint: str):
    started = time.monotonic()
    with pytest.raises(storage.EndpointUnreachable) as caught:
        storage.write_bytes("s3://never-answered/x", b"data")
    assert not isinstance(caught.value, storage.StorageOutage) and time.monotonic() - started < 30


def test_a_bad_retry_window_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FSG_STORAGE_RETRY_S", "soon")
    with pytest.raises(storage.StorageError, match="FSG_STORAGE_RETRY_S: expected seconds, got 'soon'"):
        storage.retry_window_s()


def test_a_process_started_by_one_that_reached_the_endpoint_waits_out_an_outage_too(s3_bucket: str, proxy: OutageProxy, monkeypatch: pytest.MonkeyPatch):
    """A Ray worker is a new process: the endpoint having answered its job travels in the environment."""
    storage.write_bytes(f"s3://{s3_bucket}/first", b"answered")
    assert proxy.endpoint in os.environ[storage.ANSWERED_ENV].split(",")
    proxy.refuse()
    threading.Timer(5.0, proxy.restore).start()
    script = f"from fsg_ray import storage; storage.write_bytes('s3://{s3_bucket}/from_child', b'late')"
    child = subprocess.run([sys.executable, "-c", script], env={**os.environ, "FSG_STORAGE_RETRY_S": "60"}, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert storage.read_bytes(f"s3://{s3_bucket}/from_child") == b"late"


@pytest.mark.parametrize("kind", ["refuse", "hang"])
def test_a_served_model_not_yet_loaded_is_unavailable_during_an_outage_and_loads_after(kind: str, s3_bucket: str, proxy: OutageProxy, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FSG_STORAGE_RETRY_S", "300")  # what a training process would wait; a request must not
    run = f"s3://{s3_bucket}/runs/m0"
    write_tiny_run(run, 0, "toy:faces")
    getattr(proxy, kind)()
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"model: 'm0' cannot be loaded: .*(cannot reach the S3 endpoint|NETWORK_CONNECTION)"):
        load_model("m0", run, torch.device("cpu"))
    assert time.monotonic() - started < 60
    proxy.restore()
    assert load_model("m0", run, torch.device("cpu")).info.step == TINY_STEP
