"""Adaptation step throughput: ms per step and images/s of the CDC loop, in this process vs Ray Train.

Three ways to run the same `run_adaptation` at the same per-worker batch: in this process without Ray
(one torch thread, as a one-CPU worker gets), and on Ray Train with 1 and with 2 workers (global batch
= batch x workers). Every mode times its steps with the loop's own clock (`step_time_s` of the last
checkpoint: all steps from 0, lazy R1 and path length included), so Ray's start-up is left out of
the per-step figures and shown separately as wall time. Scaling efficiency = images/s with 2 workers
/ (2 x images/s with 1 worker).

    python bench/train_step.py                      # toy config (20 steps) and 256px cm=2 (1 step)
    python bench/train_step.py --only 256px-cm2     # one config
    python bench/train_step.py --quick              # toy config only, 6 steps
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fsg_ray.adapt.loop import SingleProcess
from fsg_ray.adapt.run import RunSpec, run_adaptation
from fsg_ray.config import load_config
from fsg_ray.nets.checkpoints import FORMAT, write_checkpoint
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig
from fsg_ray.ray.cluster import connect
from fsg_ray.ray.train import Scaling, adapt_on_ray

CONFIGS = {
    "toy-64px": ModelConfig(size=64, style_dim=64, n_mlp=4, channel_max=32),
    "256px-cm2": ModelConfig(size=256, channel_multiplier=2),
}
BATCH = 4


@dataclass
class Timing:
    mode: str
    workers: int
    step_ms: float
    images_per_s: float
    wall_s: float


class MetricsOnly:
    """A RunSink that keeps the last metrics and writes nothing, so the in-process run times only steps."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    run_uri = None  # no run directory: a method's per-run artifact is made in memory

    def latest_checkpoint(self) -> None:
        return None

    def save_checkpoint(self, step: int, ckpt: dict[str, Any], metrics: dict[str, float]) -> None:
        self.metrics = metrics

    def save_grid(self, step: int, grid: Any) -> None:
        pass


def write_inputs(model: ModelConfig, root: Path) -> tuple[str, str]:
    """A random source of the given architecture (speed does not depend on the weights) and ten targets."""
    torch.manual_seed(0)
    g, d = Generator(model), Discriminator(model)
    source = str(root / "source.pt")
    write_checkpoint(source, {"format": FORMAT, "model": asdict(model), "g": g.state_dict(), "g_ema": g.state_dict(), "d": d.state_dict()})
    return source, "toy:sketch"


def in_process(spec: RunSpec) -> Timing:
    torch.set_num_threads(1)
    sink = MetricsOnly()
    started = time.perf_counter()
    run_adaptation(spec, sink, SingleProcess(), progress=False)
    wall = time.perf_counter() - started
    return Timing("in-process", 1, sink.metrics["step_time_s"] * 1000, sink.metrics["images_per_s"], wall)


def on_ray(spec: RunSpec, run_uri: str, workers: int) -> Timing:
    started = time.perf_counter()
    metrics = adapt_on_ray(spec, run_uri, Scaling(workers=workers, max_failures=0)).metrics
    wall = time.perf_counter() - started
    return Timing(f"ray x{workers}", workers, metrics["step_time_s"] * 1000, metrics["global_images_per_s"], wall)


HEADER = [
    "| mode | workers | global batch | ms/step | images/s | images/s vs in-process | scaling efficiency | wall s (incl. start-up) |",
    "|---|---|---|---|---|---|---|---|",
]


def row(t: Timing, base: Timing, one_worker: Timing | None) -> str:
    efficiency = f"{t.images_per_s / (t.workers * one_worker.images_per_s):.2f}" if one_worker else "-"
    return f"| {t.mode} | {t.workers} | {BATCH * t.workers} | {t.step_ms:.0f} | {t.images_per_s:.2f} | {t.images_per_s / base.images_per_s:.2f} | {efficiency} | {t.wall_s:.0f} |"


def bench(name: str, model: ModelConfig, steps: int, root: Path) -> None:
    """Prints each row as soon as it is measured: a later mode may not fit in memory (256px on a small box)."""
    source, target = write_inputs(model, root)
    overrides = [f"steps={steps}", f"batch={BATCH}", f"checkpoint_every={steps}", f"sample_every={steps}"]
    spec = RunSpec(source, target, load_config(None, overrides))
    print(f"\n{name}, batch {BATCH} per worker, {steps} steps\n", *HEADER, sep="\n", flush=True)
    base = in_process(spec)
    print(row(base, base, None), flush=True)
    one = on_ray(spec, str(root / f"{name}-ray1"), 1)
    print(row(one, base, one), flush=True)
    print(row(on_ray(spec, str(root / f"{name}-ray2"), 2), base, one), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy config only, few steps")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="run one config")
    args = parser.parse_args()
    # One 256px step (with R1, path length and CDC, as every step 0) takes minutes on one CPU core.
    plan = {"toy-64px": 6} if args.quick else {"toy-64px": 20, "256px-cm2": 1}
    if args.only:
        plan = {args.only: plan.get(args.only, 1)}
    connect(min_cpus=2)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, CDC (default config)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in plan.items():
            root = Path(tmp) / name
            root.mkdir()
            bench(name, CONFIGS[name], steps, root)


if __name__ == "__main__":
    main()
