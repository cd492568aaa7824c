"""Toy quality benchmark: every method adapted from the shipped toy source to every toy target, one budget, one table.

For each target (toy:sketch, painting, sunglasses, babies) the unadapted source is evaluated first as
a reference row, then each method (CDC and the baselines of SPEC §5) is adapted with the same steps
and seed and evaluated with `fsg_ray.evaluate` (FID/KID with the extractor named in the key,
intra-cluster LPIPS, correspondence error where the target is image-space). Writes per-run reports
and a method-by-method grid per target under --out, prints the table and refreshes the
"## quality (toy benchmark)" section of bench/RESULTS.md (other sections are left alone).

    .venv/bin/python bench/quality.py                       # the default budget (see RESULTS.md)
    .venv/bin/python bench/quality.py --steps 50 --targets sketch --methods cdc,tgan   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import platform
import shlex
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid

from fsg_ray.adapt.methods import METHODS
from fsg_ray.adapt.run import DirectorySink, RunSpec, run_adaptation
from fsg_ray.config import ema_decay_for_short_run, load_config
from fsg_ray.data import toy
from fsg_ray.evaluate import EvalResult, EvalSettings, evaluate, load_sampler
from fsg_ray.grids import save_png, seeded_z, to_pil

TARGETS = ("sketch", "painting", "sunglasses", "babies")
SECTION = "## quality (toy benchmark)"
SOURCE_ROW = "source (no adaptation)"
GRID_SEEDS = list(range(8))
# The default budget fits the 2-core development machine in about half an hour (see RESULTS.md).
DEFAULT_STEPS = 100
DEFAULT_N_GENERATED = 500
DEFAULT_N_LPIPS = 100
DEFAULT_N_CORR = 64
DEFAULT_WORKERS = 2
DEFAULT_TIME_LIMIT = 30.0  # `make bench` must end on a loaded shared machine too; runs in flight still finish


Job = tuple[str, str | None]  # (target, method); method None is the unadapted source


@dataclass(frozen=True)
class Row:
    target: str
    method: str
    result: EvalResult
    adapt_s: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="adaptation steps per run (the same for every method)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--n-generated", type=int, default=DEFAULT_N_GENERATED, help="samples (and held-out images) for FID/KID")
    p.add_argument("--n-lpips", type=int, default=DEFAULT_N_LPIPS, help="samples for intra-cluster LPIPS")
    p.add_argument("--n-corr", type=int, default=DEFAULT_N_CORR, help="samples for the correspondence error")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="runs at a time, one process and one thread each")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="minutes after which no new run starts (0: none); the table lists what finished")
    p.add_argument("--seed", type=int, default=0, help="adaptation and evaluation seed, the same for every run")
    p.add_argument("--source", default="toy:faces", help="source generator (default: the shipped toy model)")
    p.add_argument("--out", default="out/bench_quality", help="runs, reports and grids go here (local path)")
    p.add_argument("--results", default="bench/RESULTS.md", help="file whose quality section is refreshed; '' to skip")
    args = p.parse_args(argv)
    args.targets = _subset(args.targets, TARGETS, "--targets")
    args.methods = _subset(args.methods, tuple(METHODS), "--methods")
    for flag in ("steps", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    return args


def _subset(text: str, valid: tuple[str, ...], flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in valid:
            raise SystemExit(f"{flag}: unknown {name!r}; choose from {', '.join(valid)}")
    return names


def adapt(source: str, target: str, method: str, steps: int, seed: int, run_dir: Path) -> float:
    """One fresh adaptation run (an old run dir would be resumed, not re-timed); returns its wall time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"method={method}", f"steps={steps}", f"seed={seed}", f"checkpoint_every={steps}", f"sample_every={steps}"]
    config = load_config(None, overrides + [f"optim.ema_decay={ema_decay_for_short_run(steps)}"])
    started = time.perf_counter()
    run_adaptation(RunSpec(source=source, target=f"toy:{target}", config=config), DirectorySink(str(run_dir)), progress=False)
    return time.perf_counter() - started


@torch.no_grad()
def methods_grid(source: str, target: str, generators: dict[str, str]) -> torch.Tensor:
    """Rows: the source, its transform when the target is image-space, then each method; same z per column."""
    G_s, _ = load_sampler(source)
    z = seeded_z(GRID_SEEDS, G_s.style_dim)
    source_images = G_s(z, noise="const").clamp(-1, 1)
    rows = [source_images]
    transform = toy.image_transform(target)
    if transform is not None:
        rows.append(transform(source_images))
    # Through `load_sampler`, as the evaluation samples them: a MineGAN row goes through its miner.
    rows += [load_sampler(uri)[0](z, noise="const").clamp(-1, 1) for uri in generators.values()]
    return make_grid(torch.cat(rows), nrow=len(GRID_SEEDS), padding=2, pad_value=1.0)


def format_table(rows: list[Row]) -> str:
    """A Markdown table; metric columns are the keys the evaluations produced (their names carry the extractor)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.result.metrics if k not in keys]
    header = ["target", "method", *keys, "adapt s", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row.result.metrics[k]:.4f}" if k in row.result.metrics else ("not defined" if k.startswith("corr") else "") for k in keys]
        adapt_s = f"{row.adapt_s:.0f}" if row.method != SOURCE_ROW else "-"
        lines.append("| " + " | ".join([row.target, row.method, *cells, adapt_s, f"{row.result.elapsed_s:.0f}"]) + " |")
    return "\n".join(lines)


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the section under `heading` (up to the next "## " heading) replaced by `body`, or appended."""
    lines = text.splitlines()
    if heading not in lines:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{heading}\n\n{body.rstrip()}\n"
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = lines[end:]
    return "\n".join(lines[:start] + [heading, "", body.rstrip(), ""] + rest).rstrip("\n") + "\n"


def section_body(args: argparse.Namespace, rows: list[Row], not_run: list[Job], wall_s: float, command: str) -> str:
    offline = sorted({name for row in rows for name in row.result.offline})
    extractors = sorted({name for row in rows for name in row.result.extractors.values()})
    notes = [
        f"Machine: 2-core CPU shared with other jobs, no GPU ({platform.machine()}, torch {torch.__version__}, 1 thread per run). "
        f"Date: {datetime.date.today().isoformat()}.",
        f"Command: `{command}`; it took {wall_s / 60:.1f} min in all.",
        f"Budget: {args.steps} adaptation steps per run (batch 4, seed {args.seed}; the paper uses 5000), source `{args.source}`, "
        f"EMA half-life {args.steps / 10:g} steps (a tenth of the run, `ema_decay_for_short_run`; the paper's 312 would leave G_ema mostly the source); "
        f"FID/KID from {args.n_generated} samples against {args.n_generated} held-out target images, intra-cluster LPIPS from "
        f"{args.n_lpips} samples around the 10 shots, correspondence from {args.n_corr} samples; {args.workers} runs at a time.",
        f"Extractors: {', '.join(extractors)}.",
    ]
    if not_run:
        skipped = ", ".join(f"{target}/{method or 'source'}" for target, method in not_run)
        limit = f" within `--time-limit {args.time_limit:g}` (minutes after which no new run starts)" if args.time_limit else ""
        notes.append(f"**Partial**: {len(rows)} of {len(rows) + len(not_run)} runs finished{limit}. Not run: {skipped}.")
    if args.source != "toy:faces":
        notes.append(f"**Source is `{args.source}`, not the shipped toy model**: numbers from another source are not comparable with a `toy:faces` run.")
    if offline:
        notes.append(
            "Offline feature extractors were used (no pretrained Inception/VGG weights on this machine): the `_offline` numbers "
            "rank methods against each other here but are not comparable with the paper's FID or LPIPS."
        )
    notes.append(
        "Lower is better for FID, KID and corr; higher intra-LPIPS means more diversity (a copy of the 10 shots scores ~0). "
        f"`{SOURCE_ROW}` is the toy source evaluated as it is. Grids (rows: source, its transform for image-space targets, then "
        f"the methods in table order; same z per column) are in `{args.out}/<target>/methods.png`."
    )
    return "\n\n".join(notes) + "\n\n" + format_table(rows)


def run_job(job: Job, args: argparse.Namespace) -> Row:
    """One table row in a worker process: the source as it is (method None), or adapt + evaluate."""
    torch.set_num_threads(1)  # the machine is shared; one thread per process is also the fastest for 64px models
    target, method = job
    settings = EvalSettings(n_generated=args.n_generated, n_real=args.n_generated, n_lpips=args.n_lpips, n_corr=args.n_corr, seed=args.seed)
    out = Path(args.out) / target
    if method is None:
        result = evaluate(args.source, f"toy:{target}", args.source, settings=settings, out=str(out / "source" / "eval"))
        return Row(target, SOURCE_ROW, result, 0.0)
    adapt_s = adapt(args.source, target, method, args.steps, args.seed, out / method)
    result = evaluate(str(out / method), f"toy:{target}", args.source, settings=settings, out=str(out / method / "eval"))
    return Row(target, method, result, adapt_s)


def run_jobs(jobs: list[Job], args: argparse.Namespace) -> tuple[list[Row], list[Job]]:
    """Run `jobs` `--workers` at a time; once `--time-limit` minutes have passed start no new one.

    Returns the finished rows in job order and the jobs never started. The limit exists because the
    machine is shared: a run under heavy load can take several times its unloaded time.
    """
    deadline = time.perf_counter() + 60 * args.time_limit if args.time_limit else math.inf
    pending, running, done = list(jobs), {}, {}
    # Spawned workers: forking a process whose torch thread pools are running can deadlock.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while running or (pending and time.perf_counter() < deadline):
            while pending and len(running) < args.workers and time.perf_counter() < deadline:
                job = pending.pop(0)
                running[pool.submit(run_job, job, args)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                row = done[running.pop(future)] = future.result()
                values = ", ".join(f"{k}={v:.4f}" for k, v in row.result.metrics.items())
                print(f"{row.target} / {row.method}: {values}; adapt {row.adapt_s:.0f} s, eval {row.result.elapsed_s:.0f} s", flush=True)
    return [done[job] for job in jobs if job in done], pending


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ("python bench/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    jobs = [(target, method) for target in args.targets for method in [None, *args.methods]]
    started = time.perf_counter()
    rows, not_run = run_jobs(jobs, args)
    torch.set_num_threads(1)
    for target in sorted({row.target for row in rows}, key=args.targets.index):
        generators = {row.method: str(Path(args.out) / target / row.method) for row in rows if row.target == target and row.method != SOURCE_ROW}
        save_png(str(Path(args.out) / target / "methods.png"), to_pil(methods_grid(args.source, target, generators)))
    wall_s = time.perf_counter() - started
    print(format_table(rows))
    print(f"benchmark wall time: {wall_s / 60:.1f} min" + (f"; {len(not_run)} of {len(jobs)} runs not started (--time-limit)" if not_run else ""))
    if args.results:
        path = Path(args.results)
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        path.write_text(replace_section(text, SECTION, section_body(args, rows, not_run, wall_s, command)))
        print(f"refreshed {SECTION!r} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
