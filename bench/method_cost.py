"""Cost of every adaptation method per step, relative to CDC, measured in one process.

Each method (CDC, AdAM, RICK and the six baselines) adapts the search file's source to its target with
the search file's base config (default tune_configs/methods_toy.yaml, so AdAM's probe and RICK's warm-up
are those of the methods search), for --steps steps, one torch thread, no Ray. Two times per method:
set-up (loading the source and the shots, and a method's per-run artefact: AdAM's importance probe) and
ms per step by the loop's own clock (every step from 0: RICK's D-only warm-up and its periodic Fisher
estimates, lazy R1 and path length included). The methods run --rounds times, each round in a rotated
order so that a slow moment of a shared machine does not fall on one method; the table holds the median
of the rounds. The baseline is CDC in the same process: ratio = ms/step / CDC's ms/step.

    python bench/method_cost.py                           # all nine methods, 100 steps, 2 rounds
    python bench/method_cost.py --methods cdc,adam,rick --steps 30 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from train_step import MetricsOnly  # bench/ is on sys.path when this file runs

from fsg_ray.adapt.loop import SingleProcess
from fsg_ray.adapt.methods import METHODS
from fsg_ray.adapt.run import RunSpec, prepare, train_until_done
from fsg_ray.search.config import load_search_config

DEFAULT_SEARCH = Path(__file__).resolve().parent.parent / "tune_configs" / "methods_toy.yaml"
BASELINE = "cdc"


@dataclass(frozen=True)
class Cost:
    method: str
    setup_s: float
    step_ms: float


def measure(spec: RunSpec) -> Cost:
    started = time.perf_counter()
    run = prepare(spec, SingleProcess())
    setup_s = time.perf_counter() - started
    sink = MetricsOnly()  # no run directory: AdAM's probe is made in memory, inside the set-up timed here
    train_until_done(run, spec, sink, progress=False)
    return Cost(spec.config.method, setup_s, sink.metrics["step_time_s"] * 1000)


def median_cost(costs: list[Cost]) -> Cost:
    return Cost(costs[0].method, statistics.median(c.setup_s for c in costs), statistics.median(c.step_ms for c in costs))


def format_table(costs: list[Cost], steps: int) -> str:
    base = next(c for c in costs if c.method == BASELINE)
    lines = [
        f"| method | set-up s | ms/step | ms/step vs {BASELINE} | {steps}-step run s | run vs {BASELINE} |",
        "|---|---|---|---|---|---|",
    ]
    base_run = base.setup_s + steps * base.step_ms / 1000
    for c in sorted(costs, key=lambda c: c.step_ms):
        run_s = c.setup_s + steps * c.step_ms / 1000
        lines.append(f"| {c.method} | {c.setup_s:.1f} | {c.step_ms:.0f} | {c.step_ms / base.step_ms:.2f} | {run_s:.0f} | {run_s / base_run:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", default=str(DEFAULT_SEARCH), help="search file whose source, target and base config every method runs with")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)} ({BASELINE} is always run: it is the baseline)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; available: {', '.join(METHODS)}")
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    search = load_search_config(args.search)
    torch.set_num_threads(1)  # as a one-CPU Ray worker runs
    print(
        f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{search.source} -> {search.target}, base config of {Path(args.search).name}, {args.steps} steps, batch {search.base.batch}, "
        f"median of {args.rounds} rounds",
        flush=True,
    )
    runs: dict[str, list[Cost]] = {m: [] for m in methods}
    for round_ in range(args.rounds):
        order = methods[round_ % len(methods) :] + methods[: round_ % len(methods)]
        for method in order:
            config = replace(search.base, method=method, steps=args.steps, checkpoint_every=args.steps, sample_every=args.steps)
            cost = measure(RunSpec(search.source, search.target, config))
            runs[method].append(cost)
            print(f"round {round_ + 1}: {method}: set-up {cost.setup_s:.1f} s, {cost.step_ms:.0f} ms/step", flush=True)
    print()
    print(format_table([median_cost(costs) for costs in runs.values()], args.steps))


if __name__ == "__main__":
    main()
