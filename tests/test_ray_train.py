"""Data-parallel adaptation on Ray Train: gradient averaging, recovery from a killed worker, resume, S3."""

import io
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import ray
import ray.cloudpickle
import tiny
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from tiny import tiny_targets, write_target_folder, write_tiny_source

import fsg_ray
from fsg_ray.adapt.anchors import Latents
from fsg_ray.adapt.loop import Adaptation, SingleProcess, init_networks
from fsg_ray.adapt.run import EXPORT_FILE, RunSpec
from fsg_ray.config import load_config
from fsg_ray.nets.checkpoints import read_checkpoint
from fsg_ray.ray.collective import ProcessGroup
from fsg_ray.ray.faults import FAULT_ENV
from fsg_ray.ray.train import Scaling, adapt_on_ray

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]

# Workers unpickle the equivalence test's train function and its helpers from these test modules,
# which are not on their sys.path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(tiny)


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint: str) -> Iterator[None]:
    """One local cluster for the module, started after the AWS variables point at the loopback S3."""
    ray.init(address="local", num_cpus=4, object_store_memory=10**9, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny random source checkpoint and ten target images, as a user hands them in."""
    root = tmp_path_factory.mktemp("inputs")
    return write_tiny_source(root / "source.pt"), write_target_folder(root / "target")


def spec(files: tuple[str, str], *overrides: str) -> RunSpec:
    return RunSpec(files[0], files[1], load_config(None, ["method=tgan", "checkpoint_every=2", "sample_every=2", *overrides]))


def wait_for_line(capfd: pytest.CaptureFixture, text: str, timeout: float = 15) -> str:
    """Worker logs reach the driver's console asynchronously, a little after `fit` returns."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out, err = capfd.readouterr()
        seen += out + err
        if text in seen:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the run's log:\n{seen[-3000:]}")


# --- equivalence: 2 workers x batch b == 1 worker x batch 2b ---------------------------------------


class FixedBatches(Adaptation):
    """Feeds each phase z and reals from one global batch; rank r of `world` takes rows r::world.

    Interleaved rows keep D's minibatch-stddev groups (rows i, i + B/4, ...) the same whether the
    batch is split or not. Noise is the stored one, so nothing random differs between the two setups.
    """

    def __init__(self, pools: dict[str, torch.Tensor], world: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows = slice(self.dist.rank, None, world)
        self.z = iter(pools["z"])
        self.targets = self
        self.reals = iter(pools["reals"])

    def _latents(self, batch: int) -> Latents:
        return Latents([next(self.z)[self.rows]], None)

    def _generate(self, latents: Latents):
        return self.nets.g.synthesis(self.nets.g.latents(latents.z), noise="const")

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return next(self.reals)[self.rows]


def one_step(source: str, overrides: list[str], pools: dict[str, torch.Tensor], world: int, dist) -> dict[str, Any]:
    """One full train_step (D, R1, G, path length, EMA); the state plus D's last (R1) gradients."""
    torch.manual_seed(0)
    run = FixedBatches(pools, world, init_networks(read_checkpoint(source)), tiny_targets(), load_config(None, overrides), dist)
    run.train_step()
    return {**run.checkpoint(source, "fixed"), "d_grads": [p.grad.clone() for p in run.d_params if p.grad is not None]}


def one_step_worker(config: dict[str, Any]) -> bytes | None:
    """Rank 0's state, serialised: Ray Train refuses to return tensors from a worker."""
    state = one_step(config["source"], config["overrides"], config["pools"], 2, ProcessGroup())
    if ray.train.get_context().get_world_rank() != 0:
        return None
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def assert_close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5), where
    else:
        assert a == b, where


def test_two_workers_with_batch_b_step_like_one_worker_with_batch_2b(ray_cluster, files, tmp_path):
    # tgan: every loss is a mean over independent samples, so averaging per-worker gradients equals the
    # full-batch gradient. CDC's softmax over pairs within a worker's batch does not decompose this way.
    # The path-length step draws its own z and projection noise, outside the fixed pools: it is
    # switched off. The step still runs D, R1 (step 0), G and EMA.
    b = 4
    overrides = ["method=tgan", f"batch={b}", "optim.path_weight=0"]
    rng = torch.Generator().manual_seed(5)
    pools = {"z": torch.randn(2, 2 * b, 16, generator=rng), "reals": torch.rand(2, 2 * b, 3, 32, 32, generator=rng) * 2 - 1}
    whole = one_step(files[0], [*overrides, f"batch={2 * b}"], pools, 1, SingleProcess())

    trainer = TorchTrainer(
        one_step_worker,
        train_loop_config={"source": files[0], "overrides": overrides, "pools": pools},
        scaling_config=ScalingConfig(num_workers=2),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="equivalence", storage_path=str(tmp_path)),
    )
    split = torch.load(io.BytesIO(trainer.fit().return_value), weights_only=True)

    changed = [k for k, v in whole["g"].items() if not torch.equal(v, read_checkpoint(files[0])["g"][k])]
    assert changed, "the step must move G for the comparison to mean anything"
    for key in ("g", "g_ema", "d", "g_optim", "d_optim", "d_grads"):
        assert_close(split[key], whole[key], key)


# --- fault tolerance, resume, S3 -----------------------------------------------------------------


def test_a_killed_worker_restarts_from_the_last_checkpoint_and_finishes(ray_cluster, files, tmp_path, monkeypatch, capfd):
    run_uri = str(tmp_path / "runs" / "fault")
    monkeypatch.setenv(FAULT_ENV, "step=7,rank=1")
    result = adapt_on_ray(spec(files, "steps=8"), run_uri, Scaling(workers=2, max_failures=1))

    assert result.error is None and result.metrics["step"] == 8
    assert os.path.exists(os.path.join(run_uri, "fault_injected_step7_rank1"))
    assert read_checkpoint(run_uri)["step"] == 8
    # Ray commits a reported checkpoint a moment after the report: the restart takes the latest
    # committed one, which may be one older than the last written before the kill.
    log = wait_for_line(capfd, "resumed from checkpoint_")
    resumed = re.search(r"resumed from checkpoint_(\d+) at step (\d+)", log)
    assert resumed and int(resumed[1]) == int(resumed[2]) in (2, 4, 6)


def test_a_rerun_with_more_steps_and_workers_continues_without_rewriting_checkpoints(ray_cluster, files, tmp_path, capfd, monkeypatch):
    # Relative paths, as typed on a command line: workers run elsewhere and must still find them.
    monkeypatch.chdir(tmp_path)
    relative = tuple(os.path.relpath(f, tmp_path) for f in files)
    run_uri = tmp_path / "runs" / "resume"
    adapt_on_ray(spec(relative, "steps=4"), "runs/resume", Scaling(workers=1))
    first = {p.parent.name: p.stat().st_mtime_ns for p in run_uri.glob("checkpoint_*/state.pt")}
    result = adapt_on_ray(spec(relative, "steps=8"), "runs/resume", Scaling(workers=2))

    assert sorted(first) == ["checkpoint_000002", "checkpoint_000004"]
    assert sorted(p.name for p in run_uri.glob("checkpoint_[0-9]*")) == [f"checkpoint_{s:06d}" for s in (2, 4, 6, 8)]
    assert {name: (run_uri / name / "state.pt").stat().st_mtime_ns for name in first} == first
    assert result.metrics["step"] == 8 and read_checkpoint(str(run_uri))["step"] == 8
    assert sorted(p.name for p in (run_uri / "samples").iterdir()) == [f"step_{s:06d}.png" for s in (2, 4, 6, 8)]
    log = wait_for_line(capfd, "the global batch changes")
    assert "resumed from checkpoint_000004 at step 4" in log
    assert "checkpoint_000004 was trained on 1 workers, this run has 2" in log


def test_checkpoints_go_to_s3_and_load_back(ray_cluster, files, s3_endpoint, s3_bucket):
    run_uri = f"s3://{s3_bucket}/runs/on-s3"
    adapt_on_ray(spec(files, "steps=2", "checkpoint_every=1"), run_uri, Scaling(workers=2))

    listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(Bucket=s3_bucket, Prefix="runs/on-s3/")
    keys = {item["Key"] for item in listed["Contents"]}
    assert {"runs/on-s3/checkpoint_000001/state.pt", "runs/on-s3/checkpoint_000002/state.pt", f"runs/on-s3/{EXPORT_FILE}", "runs/on-s3/samples/step_000002.png"} <= keys
    g = fsg_ray.load_generator(run_uri)
    final = read_checkpoint(f"{run_uri}/checkpoint_000002/state.pt")
    assert final["step"] == 2
    assert all(torch.equal(v, final["g_ema"][k]) for k, v in g.state_dict().items())
    exported = fsg_ray.load_generator(f"{run_uri}/{EXPORT_FILE}")
    assert all(torch.equal(v, final["g_ema"][k]) for k, v in exported.state_dict().items())


def test_adam_on_two_workers_probes_once_and_every_rank_gates_the_same_kernels(ray_cluster, files, tmp_path):
    """Rank 0 probes and writes probe.pt; both ranks read it back. The ranks' gated weights and vectors start
    bit-identical (ProcessGroup refuses otherwise), and the trained kernels the probe ranks important are untouched."""
    from fsg_ray.adapt.methods import adam
    from fsg_ray.adapt.probe_artifact import PROBE_FILE, probe_digest

    run = str(tmp_path / "adam")
    adapt_on_ray(spec(files, "method=adam", "adam.probe_steps=2", "adam.fisher_batches=1", "steps=2"), run, Scaling(workers=2, max_failures=0))
    probe = torch.load(os.path.join(run, PROBE_FILE), weights_only=True)
    ckpt = read_checkpoint(run)
    assert ckpt["workers"] == 2 and ckpt["method_state"]["probe_sha256"] == probe_digest(probe)
    source = read_checkpoint(files[0])
    g, d = fsg_ray.load_generator(files[0], "g"), fsg_ray.load_discriminator(files[0])
    important = adam.important_kernels(adam.kernel_scores(probe["fisher_g"], probe["fisher_d"], g, d), 50.0)
    trained = ckpt["method_state"]["g_weights"]
    for layer in adam.g_layers(g):
        kernels = important[f"{layer}.weight"]
        assert torch.equal(trained[f"{layer}.weight"][:, kernels], source["g"][f"{layer}.weight"][:, kernels])
        assert not torch.equal(trained[f"{layer}.weight"][:, ~kernels], source["g"][f"{layer}.weight"][:, ~kernels])
