"""`fsg adapt --workers N`: the unchanged adaptation loop in N Ray Train workers (TorchTrainer, Train V2).

Every worker calls `run_adaptation` with a `ProcessGroup` (gradients averaged over workers) and a
`TrainReportSink` (checkpoints through `ray.train.report`, so Ray commits them and hands the latest
back after a worker failure or a rerun). Each rank draws its own z and real images (the loop seeds
them by rank), so the global batch is `config.batch` per worker times the number of workers.
Averaged gradients equal the global batch's for losses that are means over independent samples
(adversarial, R1; tested). CDC is per worker by design: its softmax runs over pairs within one
worker's `cdc.batch` z (N workers average N such estimates). Shared statistics are reduced over
workers: the path-length running mean, and ADA's r_t and image count (one p for the run). A rerun
with another worker count continues with another global batch, and says so in the log.

The run URI names the run: Ray Train's storage is its parent and the run name its last part, so
checkpoints land at `RUN_URI/checkpoint_XXXXXX/state.pt` exactly as in a single-process run, and
`fsg_ray.load_generator(RUN_URI)` reads either.

Inputs on the driver's disk (a local `--source`, `--target` or `--resume`) reach workers on other
nodes through Ray's object store (fsg_ray.ray.inputs); before training starts, every node is asked
whether it can use the run's S3 URIs, so a node without credentials fails the run with one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.v2._internal.execution.context as train_context
import torch
from ray.experimental import tqdm_ray
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer, get_device

from fsg_ray import storage
from fsg_ray.adapt.loop import StepStats
from fsg_ray.adapt.run import DirectorySink, RunSpec, check_inputs, export_final_generator, run_adaptation, stats_line
from fsg_ray.adapt.targets import closed_world, input_uris, with_source_mapped
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, checkpoint_dir_name, read_checkpoint, resolve_checkpoint_uri, write_checkpoint
from fsg_ray.ray.cluster import NodeStorageError, check_nodes_reach, connect, forwarded_env, storage_problem
from fsg_ray.ray.collective import ProcessGroup
from fsg_ray.ray.faults import FAULT_ENV, Fault, fault_hook
from fsg_ray.ray.inputs import ShippedInputs, is_shippable, ship

# Ray Train routes worker logging to the driver's console; a plain print would show twice there.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scaling:
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers: expected at least 1 Ray Train worker, got {self.workers}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures: expected a non-negative count, got {self.max_failures}")

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}


def ray_storage(run_uri: str) -> tuple[str, str, pafs.FileSystem | None]:
    """(storage_path, run name, filesystem) for Ray Train, from a run URI (local, file:// or s3://)."""
    filesystem, path = storage.resolve(run_uri)
    parent, name = posixpath.split(path.rstrip("/"))
    if not name or not parent:
        raise ValueError(f"run URI {run_uri!r}: needs a parent and a run name, like s3://bucket/runs/NAME or out/NAME")
    return parent, name, None if isinstance(filesystem, pafs.LocalFileSystem) else filesystem


class TrainReportSink:
    """A `RunSink` whose checkpoints Ray Train commits; grids go straight to the run URI from rank 0.

    With `validate` (a function of a checkpoint file, e.g. fsg_ray.eval.validation.Validation), rank 0
    measures each checkpoint before reporting it, and the numbers travel with that checkpoint's report.
    """

    def __init__(self, run_uri: str, rank: int, world_size: int, validate: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.run_uri = run_uri
        self.rank = rank
        self.world_size = world_size
        self.files = DirectorySink(run_uri)
        self.validate = validate

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """Ray's latest committed checkpoint (after a failure it can be older than the newest directory)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        name = posixpath.basename(checkpoint.path.rstrip("/"))
        ckpt = read_checkpoint(storage.join(self.run_uri, name, CHECKPOINT_FILE))
        if self.rank == 0:
            log.info("resumed from %s at step %d", name, ckpt["step"])
            trained_on = ckpt.get("workers", self.world_size)
            if trained_on != self.world_size:
                batch = ckpt["config"]["batch"]
                log.warning(
                    "%s was trained on %d workers, this run has %d: the global batch changes from %d to %d",
                    name, trained_on, self.world_size, batch * trained_on, batch * self.world_size,
                )
        return ckpt

    def save_checkpoint(self, step: int, ckpt: dict[str, Any], metrics: dict[str, float]) -> None:
        """Called on every rank: `report` is a barrier. Rank 0 alone writes the state (all ranks hold the same)."""
        metrics = {**metrics, "workers": self.world_size, "global_images_per_s": metrics["images_per_s"] * self.world_size}
        with tempfile.TemporaryDirectory() as local:
            checkpoint = None
            if self.rank == 0:
                write_checkpoint(os.path.join(local, CHECKPOINT_FILE), {**ckpt, "workers": self.world_size})
                if self.validate is not None:
                    metrics |= self.validate(os.path.join(local, CHECKPOINT_FILE))
                checkpoint = Checkpoint.from_directory(local)
                losses = " ".join(f"{k}={metrics[k]:.4g}" for k in ("d", "g", "cdc") if k in metrics)
                log.info("step %d %s %.2f s/step %.1f img/s on %d workers", step, losses, metrics["step_time_s"], metrics["global_images_per_s"], self.world_size)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(step))

    def save_grid(self, step: int, grid: Any) -> None:
        if self.rank == 0:
            self.files.save_grid(step, grid)


def losses_text(stats: StepStats) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in stats_line(stats).items())


class DriverProgress:
    """Rank 0's steps as one bar that the driver draws (Ray's tqdm): steps/s, ETA and the latest losses."""

    def __init__(self, total: int, initial: int):
        self.bar = tqdm_ray.tqdm(total=total, desc="adapt", unit="step")
        self.bar.n = initial

    def update(self, stats: StepStats) -> None:
        self.bar.set_description(f"adapt {losses_text(stats)}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class LoggedProgress:
    """Rank 0's steps as a log line every tenth of the run, for a driver whose stderr is a file or a pipe: Ray's
    tqdm draws only on a terminal (into a file it streams an empty worker line per update)."""

    def __init__(self, total: int, initial: int):
        self.total, self.first, self.step = total, initial, initial
        self.every = max(1, (total - initial) // 10)
        self.started = time.perf_counter()

    def update(self, stats: StepStats) -> None:
        self.step += 1
        done = self.step - self.first
        if done % self.every and self.step != self.total:
            return
        rate = done / (time.perf_counter() - self.started)
        eta = datetime.timedelta(seconds=round((self.total - self.step) / rate))
        log.info("adapt %d/%d steps, %.2f steps/s, ETA %s, %s", self.step, self.total, rate, eta, losses_text(stats))

    def close(self) -> None:
        pass


def quiet_ray_train_reports() -> None:
    """Ray Train logs every `report` of every worker at INFO ("Reporting training result 1: TrainingReport(...)"),
    through a logger named after its file, so Train's own log level does not reach it; the run's progress
    bar and checkpoint lines say the same once."""
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """The body of every Ray Train worker."""
    spec: RunSpec = config["spec"]
    run_uri: str = config["run_uri"]
    inputs: ShippedInputs = config["inputs"]
    # A node that joined after the driver's check (autoscaling) is checked here, before any work.
    if storage.is_remote(run_uri) and (problem := storage_problem(run_uri)):
        raise NodeStorageError(problem)
    quiet_ray_train_reports()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # Ray Train keys node ranks by IP, which several nodes can share: the node id says where a rank runs.
    log.info("rank %d of %d on node %s", rank, world_size, ray.get_runtime_context().get_node_id())
    torch.set_num_threads(config["threads"])
    if ray.train.get_checkpoint() is not None:
        # A restart after a failure, or a rerun: continue from Ray's checkpoint, not the initial --resume.
        spec = dataclasses.replace(spec, resume_from=None)
    # Fresh patch heads are random: the same seed on every rank makes them identical
    # (ProcessGroup checks that all ranks start from the same weights).
    torch.manual_seed(spec.config.seed)
    on_step = fault_hook(Fault.parse(config["fault"]), run_uri, rank) if config["fault"] else None
    # The GPU Ray assigned to this worker, or the CPU.
    device = get_device()
    validation = config.get("validation")
    validate = functools.partial(validation, device=str(device)) if validation is not None else None
    sink = TrainReportSink(run_uri, rank, world_size, validate)
    progress = rank == 0 and config["progress"]
    bar = DriverProgress if config["progress_on_terminal"] else LoggedProgress
    run_adaptation(spec, sink, ProcessGroup(), progress=progress, on_step=on_step, device=device, locate=inputs.locate, bar=bar)


def ship_inputs(spec: RunSpec) -> ShippedInputs:
    """The spec's local inputs in Ray's object store (call on the driver, after `pin_local_inputs`)."""
    return ship([spec.source, *input_uris(spec.target), spec.resume_from])


def make_trainer(
    spec: RunSpec,
    run_uri: str,
    scaling: Scaling,
    inputs: ShippedInputs | None = None,
    validation: Callable[..., dict[str, Any]] | None = None,
    callbacks: Sequence[UserCallback] = (),
    progress: bool = False,
) -> TorchTrainer:
    """A TorchTrainer of `train_worker` for the run at `run_uri`.

    `inputs` ships the spec's local files; without it they are shipped from this process, so a Tune
    trial (which runs on any node) must get them shipped by the driver. `validation(checkpoint_file,
    device=)` adds metrics to every report. `progress`: rank 0's progress bar, drawn by the driver.
    """
    storage_path, name, filesystem = ray_storage(run_uri)
    config = {
        "spec": spec,
        "run_uri": run_uri,
        "inputs": ship_inputs(spec) if inputs is None else inputs,
        "fault": os.environ.get(FAULT_ENV),
        "threads": max(1, int(scaling.cpus_per_worker)),
        "validation": validation,
        "progress": progress,
        "progress_on_terminal": sys.stderr.isatty(),  # the driver's: where Ray's tqdm would be drawn
    }
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.gpus_per_worker > 0, resources_per_worker=scaling.resources()),
        # NCCL on GPUs, gloo on CPUs (NCCL reduces only CUDA tensors).
        torch_config=TorchConfig(backend="nccl" if scaling.gpus_per_worker else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.config.keep_checkpoints),
            # Also when this process started Ray itself before the endpoint was set (tests, notebooks).
            worker_runtime_env={"env_vars": forwarded_env()},
            callbacks=list(callbacks),
        ),
    )


def pin_local_inputs(spec: RunSpec) -> RunSpec:
    """Local inputs named absolutely (that is how checkpoints record them); a local run folder given as
    source or resume point narrowed to its latest checkpoint file, the only file of it that must travel."""

    def pinned(name: str | None, is_checkpoint: bool) -> str | None:
        if not is_shippable(name):
            return name
        name = storage.absolute(name)
        return resolve_checkpoint_uri(name) if is_checkpoint else name

    target = with_source_mapped(spec.target, lambda uri: pinned(uri, True)) if closed_world(spec.target) else pinned(spec.target, False)
    return dataclasses.replace(spec, source=pinned(spec.source, True), target=target, resume_from=pinned(spec.resume_from, True))



def adapt_on_ray(spec: RunSpec, run_uri: str, scaling: Scaling, progress: bool = False) -> ray.train.Result:
    """Train to `spec.config.steps` on Ray (resuming the run if it exists), then export the generator.

    Raises ray.train.TrainingFailedError when the workers fail more than `max_failures` times.
    """
    spec, run_uri = pin_local_inputs(spec), storage.absolute(run_uri)
    check_inputs(spec, run_uri)
    connect(min_cpus=scaling.workers * scaling.cpus_per_worker)
    check_nodes_reach([run_uri, *(name for name in (spec.source, spec.target, spec.resume_from) if name)])
    result = make_trainer(spec, run_uri, scaling, ship_inputs(spec), progress=progress).fit()
    export_final_generator(run_uri)
    return result
