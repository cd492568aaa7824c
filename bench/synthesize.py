"""Synthesis throughput: images/s of the `fsg synthesize` job against the bare generator forward in this process.

The job renders every seed inside its aligned block of 16 (fsg_ray/synth/render.py), so the baseline
is the raw forward `G(z, noise="const")` at batch 16 with one torch thread, as a one-CPU Ray worker
runs it, measured right before and right after each job (their mean: a shared box drifts). The
job's steady rate leaves out Ray's start-up (worker processes, actor start, generator load): after a
warm-up job it runs N and 2N images and takes N / (t(2N) - t(N)). Ratio = steady job images/s /
(workers x forward images/s). The render rate inside the job (images / render seconds per worker)
shows what the actor adds around the forward (z, noise, uint8 conversion). The encode share is the
encode tasks' time (PNG encoding, Parquet, write) over render plus encode time, summed over workers
and tasks, from the 2N run.

    python bench/synthesize.py                          # toy:faces, N=1024, 1 and 2 workers
    python bench/synthesize.py --count 256 --workers 1  # a quicker check
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.grids import seeded_z
from fsg_ray.ray.cluster import connect
from fsg_ray.ray.synthesize import Summary, synthesize
from fsg_ray.synth.options import DatasetOptions, Scaling
from fsg_ray.synth.render import BLOCK, to_uint8
from fsg_ray.synth.shards import encode_image

SHARD_ROWS = 128


@torch.no_grad()
def forward_rate(generator: str, count: int = 256) -> float:
    """Images/s of the bare forward at batch BLOCK, one thread, z made beforehand; median over blocks."""
    torch.set_num_threads(1)
    g, _ = load_sampler(generator)
    g.eval()
    blocks = [seeded_z(list(range(start, start + BLOCK)), g.style_dim) for start in range(0, count, BLOCK)]
    g(blocks[0], noise="const")  # warm-up
    times = []
    for z in blocks:
        started = time.perf_counter()
        g(z, noise="const")
        times.append(time.perf_counter() - started)
    return BLOCK / statistics.median(times)


@torch.no_grad()
def encode_ms(generator: str, image_format: str) -> float:
    """Milliseconds to encode one image of the generator's, median over one block."""
    g, _ = load_sampler(generator)
    images = to_uint8(g(seeded_z(list(range(BLOCK)), g.style_dim), noise="const")).numpy()
    times = []
    for pixels in images:
        started = time.perf_counter()
        encode_image(pixels, image_format, None)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def job_run(generator: str, count: int, workers: int, image_format: str, root: str) -> Summary:
    options = DatasetOptions(generator=generator, count=count, format=image_format, shard_rows=SHARD_ROWS)
    return synthesize(options, tempfile.mkdtemp(dir=root), Scaling(workers=workers), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="toy:faces")
    parser.add_argument("--count", type=int, default=1024, help="N: the job runs N and 2N images (shards of 128)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--format", default="png", choices=("png", "webp", "jpeg"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    encode = encode_ms(args.generator, args.format)
    connect(min_cpus=max(int(w) for w in args.workers.split(",")) + 1)
    print(f"# {args.generator}, {args.format}, N={args.count}; {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"# {args.format} encode: {encode:.2f} ms/image")
    print(
        f"| workers | forward images/s (batch {BLOCK}, 1 thread, before/after) | job wall s (N / 2N) | job steady images/s "
        "| ratio vs workers x forward | render images/s per worker in the job | encode share |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for workers in (int(w) for w in args.workers.split(",")):
            before = forward_rate(args.generator)
            job_run(args.generator, SHARD_ROWS * workers, workers, args.format, root)  # warm-up: worker processes import once
            single = job_run(args.generator, args.count, workers, args.format, root)
            double = job_run(args.generator, 2 * args.count, workers, args.format, root)
            after = forward_rate(args.generator)
            steady = args.count / (double.wall_s - single.wall_s)
            share = double.encode_s / (double.render_s + double.encode_s)
            print(
                f"| {workers} | {before:.1f} / {after:.1f} | {single.wall_s:.1f} / {double.wall_s:.1f} | {steady:.1f} "
                f"| {steady / (workers * (before + after) / 2):.2f} | {double.images / double.render_s:.1f} | {share:.0%} |"
            )


if __name__ == "__main__":
    main()
