"""One Ray Train worker on the GPU (NCCL) runs the same steps as this process: same losses and weights.

The same spec (a seeded random source, `toy:sketch` targets, CDC defaults, batch 4) is trained for
`--steps` steps twice: in this process with `run_adaptation`, and by `adapt_on_ray` with one worker
holding the GPU (backend NCCL; gloo on the CPU). Both draw the same z, images and noise (seeded by
step and rank), so the final losses and weights agree up to the device's floating-point
nondeterminism: exactly on the CPU, within `--rtol` on a GPU (cuDNN may pick other algorithms in
another process). Exits 1 if they do not.

    python bench/gpu_ray.py --device cuda
    python bench/gpu_ray.py --device cpu                     # the CPU toy mode (toy-64px)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from train_step import CONFIGS, write_inputs

from fsg_ray.adapt.loop import SingleProcess
from fsg_ray.adapt.run import RunSpec, run_adaptation
from fsg_ray.config import load_config
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, checkpoint_dir_name, read_checkpoint
from fsg_ray.ray.train import Scaling, adapt_on_ray

LOSSES = ("d", "g", "cdc")


class LastCheckpoint:
    """A RunSink that keeps the last checkpoint and metrics in memory."""

    def __init__(self) -> None:
        self.ckpt: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    run_uri = None  # no run directory: a method's per-run artifact is made in memory

    def latest_checkpoint(self) -> None:
        return None

    def save_checkpoint(self, step: int, ckpt: dict[str, Any], metrics: dict[str, float]) -> None:
        self.ckpt, self.metrics = ckpt, metrics

    def save_grid(self, step: int, grid: Any) -> None:
        pass


def max_relative_weight_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k].double().cpu() - b[k].double().cpu()).abs().max() / a[k].double().abs().max().clamp_min(1e-12)).item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: 256px-cm2 on a GPU, toy-64px on the CPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rtol", type=float, help="largest relative gap of a loss or weight (default: 1e-5 on the CPU, 1e-2 on a GPU)")
    args = parser.parse_args()
    args.config = args.config or ("256px-cm2" if args.device == "cuda" else "toy-64px")
    rtol = args.rtol if args.rtol is not None else (1e-5 if args.device == "cpu" else 1e-2)
    gpus = 1.0 if args.device == "cuda" else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        source, target = write_inputs(CONFIGS[args.config], Path(tmp))
        overrides = [f"steps={args.steps}", "batch=4", f"checkpoint_every={args.steps}", f"sample_every={args.steps}"]
        spec = RunSpec(source, target, load_config(None, overrides))
        torch.set_num_threads(1)  # what a one-CPU worker gets: same reductions, same numbers
        torch.manual_seed(spec.config.seed)  # the fresh patch heads, seeded as train_worker seeds them
        sink = LastCheckpoint()
        started = time.perf_counter()
        run_adaptation(spec, sink, SingleProcess(), progress=False, device=args.device)
        in_process_s = time.perf_counter() - started
        started = time.perf_counter()
        run_uri = str(Path(tmp) / "ray-run")
        try:
            result = adapt_on_ray(spec, run_uri, Scaling(workers=1, gpus_per_worker=gpus, max_failures=0))
        finally:
            ray.shutdown()
        ray_s = time.perf_counter() - started
        on_ray = read_checkpoint(str(Path(run_uri) / checkpoint_dir_name(args.steps) / CHECKPOINT_FILE))
    losses = [k for k in LOSSES if k in sink.metrics]  # the loop leaves out a CDC loss of exactly 0
    gaps = {k: abs(result.metrics[k] - sink.metrics[k]) / max(abs(sink.metrics[k]), 1e-12) for k in losses}
    gaps["weights (G, D)"] = max(max_relative_weight_gap(sink.ckpt[n], on_ray[n]) for n in ("g", "d"))
    backend = "NCCL" if gpus else "gloo"
    print(f"\n{args.config}: {args.steps} steps in this process vs 1 Ray Train worker ({backend}) on {args.device}; tolerance {rtol:g}")
    print(f"wall s: in-process {in_process_s:.0f}, Ray (start-up included) {ray_s:.0f}")
    print("| quantity | in-process | Ray worker | relative gap | |")
    print("|---|---:|---:|---:|---|")
    for k in losses:
        print(f"| {k} loss of the last step | {sink.metrics[k]:.6g} | {result.metrics[k]:.6g} | {gaps[k]:.2e} | {'ok' if gaps[k] <= rtol else 'FAIL'} |")
    weights = gaps["weights (G, D)"]
    print(f"| weights of G and D (max over tensors) | | | {weights:.2e} | {'ok' if weights <= rtol else 'FAIL'} |")
    if any(gap > rtol for gap in gaps.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
