"""A whole adaptation run: source + target + config -> checkpoints and correspondence grids under a run URI.

`run_adaptation` is what `fsg adapt` calls in one process and what every Ray Train worker calls;
they differ only in the `RunSink` (where checkpoints go) and `Distributed` (gradient averaging).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm import tqdm

from fsg_ray import storage
from fsg_ray.adapt.loop import Adaptation, Distributed, SingleProcess, StepStats, new_adaptation
from fsg_ray.adapt.methods import Method, make_method
from fsg_ray.adapt.targets import load_target, locate_target
from fsg_ray.config import AdaptConfig, config_to_dict, flatten
from fsg_ray.data.images import FewShotImages, warn_if_few
from fsg_ray.grids import pair_grid, same_noise_pair, save_png, seeded_z
from fsg_ray.nets.checkpoints import (
    CHECKPOINT_FILE,
    CheckpointError,
    checkpoint_dir_name,
    export_checkpoint,
    latest_checkpoint_dir,
    model_config,
    read_checkpoint,
    write_checkpoint,
)
from fsg_ray.nets.stylegan2 import Discriminator

GRID_SEEDS = list(range(16))
EXPORT_FILE = "generator.pt"
SCHEDULE_KEYS = {"steps", "checkpoint_every", "sample_every", "keep_checkpoints"}  # change no weight
# What a run from before a field existed did, where that differs from the field's default today: it trained
# its noise strengths as the reference does, so it resumes only under noise.strength=learned.
BEFORE_FIELD = {"noise.strength": "learned"}


class RunSink(Protocol):
    """Where a run's checkpoints, grids and metrics go."""

    run_uri: str | None  # where a method's per-run artifact is kept; None: made in memory for this process only

    def latest_checkpoint(self) -> dict[str, Any] | None: ...

    def save_checkpoint(self, step: int, ckpt: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def save_grid(self, step: int, grid: Any) -> None: ...


@dataclass
class DirectorySink:
    """A run directory, local or `s3://`: `checkpoint_000500/state.pt`, `samples/step_000500.png`."""

    run_uri: str
    keep: int | None = None

    def latest_checkpoint(self) -> dict[str, Any] | None:
        latest = latest_checkpoint_dir(self.run_uri)
        return None if latest is None else read_checkpoint(storage.join(self.run_uri, latest, CHECKPOINT_FILE))

    def save_checkpoint(self, step: int, ckpt: dict[str, Any], metrics: dict[str, float]) -> None:
        write_checkpoint(storage.join(self.run_uri, checkpoint_dir_name(step), CHECKPOINT_FILE), ckpt)
        if self.keep is not None:
            names = sorted(n for n in storage.list_dir(self.run_uri) if n.startswith("checkpoint_"))
            for old in names[: -self.keep]:
                storage.delete(storage.join(self.run_uri, old))

    def save_grid(self, step: int, grid: Any) -> None:
        save_png(storage.join(self.run_uri, "samples", f"step_{step:06d}.png"), grid)


def same_place(name: str | None) -> str | None:
    """Inputs read where they are named: a one-process run, or a worker that shares the driver's disk."""
    return name


Locate = Callable[[str | None], str | None]


@dataclass(frozen=True)
class RunSpec:
    source: str
    target: str
    config: AdaptConfig
    resume_from: str | None = None


def check_resumable(ckpt: dict[str, Any], config: AdaptConfig, where: str) -> None:
    """A run continues only under the config it was started with; only `steps` may grow.

    A field the checkpoint does not record is newer than the run, which ran with that field's default
    (or, where the default changed since, with the behaviour in BEFORE_FIELD).
    """
    stored = flatten(ckpt.get("config", {}))
    defaults = flatten(config_to_dict(AdaptConfig()))
    for key, now in sorted(flatten(config_to_dict(config)).items()):
        if key.split(".")[0] in SCHEDULE_KEYS:
            continue
        was = stored.get(key, BEFORE_FIELD.get(key, defaults[key]))
        if was != now:
            raise CheckpointError(f"{where}: cannot resume, config {key} was {was!r}, now {now!r}")


def check_inputs(spec: RunSpec, run_uri: str | None = None, locate: Locate = same_place) -> None:
    """Every check a run makes on its config, source, target and resume point, without building or training it.

    `fsg adapt --workers N`, `fsg demo` and `fsg tune` call this before Ray starts, so bad input fails in one
    line on the driver instead of in every worker. The method's options are checked against a weightless
    (meta-device) discriminator of the source's architecture.
    """
    method = make_method(spec.config)
    source = read_checkpoint(locate(spec.source))
    model = model_config(source)
    load_target(locate_target(spec.target, locate), model.size)
    with torch.device("meta"):
        method.check(Discriminator(model))
    resume = read_checkpoint(locate(spec.resume_from)) if spec.resume_from else DirectorySink(run_uri).latest_checkpoint() if run_uri else None
    if resume is not None:
        check_resumable(resume, spec.config, resume["uri"])


def shared_artifact(
    method: Method, run_uri: str, source: dict[str, Any], targets: FewShotImages, dist: Distributed, device: torch.device | str
) -> dict[str, Any]:
    """The method's per-run artifact at RUN_URI/<artifact>: made once, by rank 0, then read back by every rank.

    A rerun or a resume finds the file and reuses it (the method checks that it fits this run); Ray Train
    workers all read the bytes rank 0 wrote, so every rank adapts with the very same artifact.
    """
    uri = storage.join(run_uri, method.artifact)
    if dist.rank == 0 and not storage.exists(uri):
        write_checkpoint(uri, method.make_artifact(source, targets, device))
    dist.total(torch.zeros(1))  # a barrier: no rank reads before rank 0 has written
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def prepare(spec: RunSpec, dist: Distributed | None = None, device: torch.device | str = "cpu", locate: Locate = same_place, run_uri: str | None = None) -> Adaptation:
    """The run at step 0; with `run_uri`, a method's per-run artifact is kept (and found again) there."""
    source = read_checkpoint(locate(spec.source))
    images = load_target(locate_target(spec.target, locate), model_config(source).size)
    warn_if_few(images, spec.config.anchors.count)
    targets = FewShotImages(images)
    method = make_method(spec.config)
    artifact = None
    if method.artifact is not None and run_uri is not None:
        artifact = shared_artifact(method, run_uri, source, targets, dist or SingleProcess(), device)
    return new_adaptation(source, targets, spec.config, dist, device, artifact)


@torch.no_grad()
def correspondence_grid(run: Adaptation) -> Any:
    """The same z and G_s's stored noise through G_s and G_ema, source row above target row."""
    z = seeded_z(GRID_SEEDS, run.style_dim).to(run.device)
    return pair_grid(*same_noise_pair(run.nets.g_source, run.nets.g_ema, z))


class Progress(Protocol):
    """What a run shows while it trains: called once per step, closed when the run ends."""

    def update(self, stats: StepStats) -> None: ...

    def close(self) -> None: ...


class ConsoleProgress:
    """A tqdm bar on this process's stderr: steps/s, ETA and the latest losses."""

    def __init__(self, total: int, initial: int):
        self.bar = tqdm(total=total, initial=initial, desc="adapt", unit="step")

    def update(self, stats: StepStats) -> None:
        self.bar.update(1)
        self.bar.set_postfix(stats_line(stats), refresh=False)

    def close(self) -> None:
        self.bar.close()


def stats_line(stats: StepStats) -> dict[str, float]:
    line = {"d": stats.d_loss, "g": stats.g_loss}
    if stats.cdc_loss:
        line["cdc"] = stats.cdc_loss
    return line


def run_adaptation(
    spec: RunSpec,
    sink: RunSink,
    dist: Distributed | None = None,
    progress: bool = True,
    on_step: Callable[[Adaptation], None] | None = None,
    device: torch.device | str = "cpu",
    locate: Locate = same_place,
    bar: Callable[[int, int], Progress] = ConsoleProgress,
) -> Adaptation:
    """Train from the sink's latest checkpoint (or `resume_from`, or the start) to `config.steps`.

    `locate` maps each input the spec names to where this process reads it (a Ray worker reads a copy
    shipped from the driver, fsg_ray.ray.inputs); checkpoints keep the names the user gave.
    """
    ckpt = read_checkpoint(locate(spec.resume_from)) if spec.resume_from else sink.latest_checkpoint()  # first: an unusable sink fails fast
    run = prepare(spec, dist, device, locate, sink.run_uri)
    if ckpt is not None:
        check_resumable(ckpt, spec.config, ckpt["uri"])
        run.restore(ckpt)
    return train_until_done(run, spec, sink, progress, on_step, bar)


def train_until_done(
    run: Adaptation,
    spec: RunSpec,
    sink: RunSink,
    progress: bool = True,
    on_step: Callable[[Adaptation], None] | None = None,
    bar: Callable[[int, int], Progress] = ConsoleProgress,
) -> Adaptation:
    """Steps to `config.steps`; with `progress`, a `bar(total, initial)` shows them."""
    config = spec.config
    shown = bar(config.steps, run.step) if progress else None
    started, first_step = time.perf_counter(), run.step
    while run.step < config.steps:
        stats = run.train_step()
        if shown is not None:
            shown.update(stats)
        if on_step is not None:
            on_step(run)
        done = run.step == config.steps
        if run.step % config.sample_every == 0 or done:
            sink.save_grid(run.step, correspondence_grid(run))
        if run.step % config.checkpoint_every == 0 or done:
            elapsed = time.perf_counter() - started
            steps = run.step - first_step
            metrics = {**stats_line(stats), "step": run.step, "step_time_s": elapsed / steps, "images_per_s": steps * config.batch / elapsed}
            sink.save_checkpoint(run.step, run.checkpoint(spec.source, spec.target), metrics)
    if shown is not None:
        shown.close()
    return run


def export_final_generator(run_uri: str) -> str:
    """The run's latest checkpoint, also in the field's .pt format (`g`, `g_ema`, `d`) at RUN_URI/generator.pt."""
    exported = storage.join(run_uri, EXPORT_FILE)
    export_checkpoint(run_uri, exported)
    return exported
