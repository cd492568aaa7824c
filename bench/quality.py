"""Toy quality benchmark: every method adapted from the shipped toy source to every toy target, one budget, one table.

Targets are closed-world (`closed:tint|sketch|painting|negative`: shots and held-out images are
T(G_s(z)), so the ideal T∘G_s is known) and data-defined (`toy:sketch`, `painting`, `sunglasses`,
`babies`). For each, the unadapted source is evaluated first as a reference row (and, on a closed-world
target, the ideal), then each method (CDC and the baselines of SPEC §5) is adapted with the same steps
and seed and evaluated with `fsg_ray.eval.protocol`: KID (and FID when the sample counts define it) with
the FID Inception, intra-cluster ST-LPIPS, the correspondence ratios for every target, the paired
distance to transform(G_s(z)) where the target has a transform, and on closed-world targets the share
of the source-to-ideal gap each of those distances closes. Every number but FID carries its bootstrap
interval. Each target's held-out images go through the Inception once (cached under --out). Rows are
ranked by KID within their target; a rank marked ≈ is not resolved from the one above it (their KID
intervals overlap). Writes per-run reports and a method-by-method grid per target under --out, prints
the table and refreshes the "## quality (toy benchmark)" section of bench/RESULTS.md (other sections
are left alone).

    .venv/bin/python bench/quality.py                       # the default budget (see RESULTS.md)
    .venv/bin/python bench/quality.py --steps 50 --targets closed:sketch --methods cdc,tgan   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from fsg_ray import storage
from fsg_ray.adapt.methods import METHODS
from fsg_ray.adapt.run import DirectorySink, RunSpec, run_adaptation
from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.adapt.targets import closed_world
from fsg_ray.config import ConfigError, load_config
from fsg_ray.eval.protocol import IDEAL_GENERATOR, evaluate, parse_metrics, target_features, target_transform
from fsg_ray.eval.results import FEATURES, EvalResult, EvalSettings
from fsg_ray.grids import save_png, seeded_z, stored_noise, to_pil
from fsg_ray.nets.checkpoints import resolve_checkpoint_uri

CLOSED_TARGETS = ("closed:tint", "closed:sketch", "closed:painting", "closed:negative")
TARGETS = (*CLOSED_TARGETS, "toy:sketch", "toy:painting", "toy:sunglasses", "toy:babies")
SECTION = "## quality (toy benchmark)"
SOURCE_ROW = "source (no adaptation)"
IDEAL_ROW = "ideal (T∘G_s)"
GRID_SEEDS = list(range(8))
# The Inception takes ~0.2 s per image on one core of the development machine: KID from 200 samples
# against 300 held-out images (FID would need 2049 of each), see RESULTS.md.
DEFAULT_STEPS = 200
DEFAULT_N_GENERATED = 200
DEFAULT_N_REAL = 300
DEFAULT_N_LPIPS = 100
DEFAULT_N_CORR = 64
DEFAULT_WORKERS = 2
DEFAULT_TIME_LIMIT = 30.0  # `make bench` must end on a loaded shared machine too; runs in flight still finish
RANK_KEYS = ("kid", "kid_offline")  # what rows are ranked by: FID is singular at these sample counts


Job = tuple[str, str | None, int]  # (target, method, steps); method None is the unadapted source, IDEAL_GENERATOR the ideal


@dataclass(frozen=True)
class Row:
    target: str
    method: str
    steps: int
    result: EvalResult
    adapt_s: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="adaptation steps per run (the same for every method)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--n-generated", type=int, default=DEFAULT_N_GENERATED, help="samples for KID (and FID when above the feature dims)")
    p.add_argument("--n-real", type=int, default=DEFAULT_N_REAL, help="held-out target images for KID/FID")
    p.add_argument("--features", choices=FEATURES, default="inception", help="FID/KID features (offline: fast, labelled, not comparable)")
    p.add_argument("--n-lpips", type=int, default=DEFAULT_N_LPIPS, help="samples for intra-cluster LPIPS")
    p.add_argument("--n-corr", type=int, default=DEFAULT_N_CORR, help="samples for the correspondence error and ratios")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="runs at a time, one process and one thread each")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="minutes after which no new run starts (0: none); the table lists what finished")
    p.add_argument("--seed", type=int, default=0, help="adaptation and evaluation seed, the same for every run")
    p.add_argument("--source", default="toy:faces", help="source generator (default: the shipped toy model)")
    p.add_argument("--out", default="out/bench_quality", help="runs, reports and grids go here (local path)")
    p.add_argument("--results", default="bench/RESULTS.md", help="file whose quality section is refreshed; '' to skip")
    p.add_argument("--reuse", action="store_true", help="reuse a run under --out that finished these steps and was evaluated with these settings")
    p.add_argument("--metrics", help="comma-separated subset of fsg eval's metrics (default: every one defined); kid alone is the cheapest ranking")
    add_set_flag(p)
    args = p.parse_args(argv)
    args.metrics = parse_metrics(args.metrics) if args.metrics else None
    args.targets = _subset(args.targets, TARGETS, "--targets")
    args.methods = _subset(args.methods, tuple(METHODS), "--methods")
    check_overrides(p, args.set)
    for flag in ("steps", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    return args


def add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override an AdaptConfig field in every run (repeatable), e.g. rick.warmup_steps=50: each method reads only its own keys",
    )


# Keys each run sets itself (`adapt`): a --set of one would silently relabel or resize every row.
BENCH_KEYS = {"method": "--methods", "steps": "--steps/--budgets", "seed": "--seed", "checkpoint_every": "--steps", "sample_every": "--steps"}


def check_overrides(p: argparse.ArgumentParser, overrides: list[str]) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key in BENCH_KEYS:
            p.error(f"--set {override}: the bench sets {key} for each run; use {BENCH_KEYS[key]}")
    try:
        load_config(None, overrides)
    except ConfigError as error:
        p.error(f"--set: {error}")


def overrides_note(overrides: list[str]) -> str:
    return f"Every run with `{' '.join(f'--set {o}' for o in overrides)}` (each method reads only its own keys)."


def _subset(text: str, valid: tuple[str, ...], flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in valid:
            raise SystemExit(f"{flag}: unknown {name!r}; choose from {', '.join(valid)}")
    return names


def settings_of(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        n_generated=args.n_generated, n_real=args.n_real, n_lpips=args.n_lpips, n_corr=args.n_corr, seed=args.seed, features=args.features
    )


def target_dir(out: str, target: str) -> Path:
    return Path(out) / target.replace(":", "_").replace("@", "_at_").replace("/", "_")


def run_dir(out: str, target: str, method: str | None, steps: int) -> Path:
    return target_dir(out, target) / ("source" if method is None else IDEAL_GENERATOR if method == IDEAL_GENERATOR else f"{method}-{steps}steps")


def adapt(source: str, target: str, method: str, steps: int, seed: int, overrides: list[str], directory: Path) -> float:
    """One fresh adaptation run with the default config and `--set` overrides (an old run dir would be resumed, not re-timed); returns its wall time."""
    shutil.rmtree(directory, ignore_errors=True)
    config = load_config(None, [f"method={method}", f"steps={steps}", f"seed={seed}", f"checkpoint_every={steps}", f"sample_every={steps}", *overrides])
    started = time.perf_counter()
    run_adaptation(RunSpec(source=source, target=target, config=config), DirectorySink(str(directory)), progress=False)
    return time.perf_counter() - started


@functools.cache
def source_digest(source: str) -> str:
    """The source checkpoint's content, so a reused run or cache is one of this source (a name like
    `toy:faces` has named more than one model)."""
    return hashlib.sha256(storage.read_bytes(resolve_checkpoint_uri(source))).hexdigest()[:16]


def real_features_path(out: str, target: str, settings: EvalSettings, source: str) -> Path:
    # A closed-world target's held-out images are made by the source.
    return target_dir(out, target) / f"real_features_{settings.features}_n{settings.n_real}_seed{settings.seed}_{source_digest(source)}.npy"


def cache_real_features(args: argparse.Namespace, targets: list[str]) -> None:
    """Each target's held-out images through the FID features once, for every run of that target.

    One process and one thread per target, `--workers` at a time: on a loaded machine two threads of
    one forward pass wait for each other, two processes do not.
    """
    missing = [t for t in targets if not real_features_path(args.out, t, settings_of(args), args.source).exists()]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_save_real_features, missing, [args] * len(missing)))


def _save_real_features(target: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    settings = settings_of(args)
    path = real_features_path(args.out, target, settings, args.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, target_features(target, load_sampler(args.source)[0].config.size, settings))


@torch.no_grad()
def methods_grid(source: str, target: str, generators: dict[str, str]) -> torch.Tensor:
    """Rows: the source, its transform when the target has one (the ideal of a closed-world target), then each method; same z and the source's noise per column."""
    G_s, _ = load_sampler(source)
    z = seeded_z(GRID_SEEDS, G_s.style_dim)
    noise = stored_noise(G_s)
    source_images = G_s(z, noise=noise).clamp(-1, 1)
    rows = [source_images]
    transform = target_transform(target)
    if transform is not None:
        rows.append(transform(source_images))
    # Through `load_sampler`, as the evaluation samples them: a MineGAN row goes through its miner.
    rows += [load_sampler(uri)[0](z, noise=noise).clamp(-1, 1) for uri in generators.values()]
    return make_grid(torch.cat(rows), nrow=len(GRID_SEEDS), padding=2, pad_value=1.0)


def ranks(rows: list[Row]) -> dict[int, str]:
    """Rank (1 = lowest KID) of each row within its target and budget, keyed by row index; "≈" marks a rank
    whose KID interval overlaps that of the row ranked just above it (the difference is not resolved)."""
    ranked: dict[int, str] = {}
    for group in {(row.target, row.steps) for row in rows}:
        members = sorted((i for i, row in enumerate(rows) if (row.target, row.steps) == group and _rank_key(row) is not None), key=lambda i: _rank_value(rows[i]))
        for place, i in enumerate(members, start=1):
            ranked[i] = f"{place}" + ("≈" if place > 1 and _overlap(rows[members[place - 2]], rows[i]) else "")
    return ranked


def _rank_key(row: Row) -> str | None:
    return next((k for k in RANK_KEYS if k in row.result.metrics), None)


def _rank_value(row: Row) -> float:
    return row.result.metrics[_rank_key(row)]


def _overlap(a: Row, b: Row) -> bool:
    key = _rank_key(a)
    if key not in a.result.intervals or key not in b.result.intervals:
        return False
    (a_low, a_high), (b_low, b_high) = a.result.intervals[key], b.result.intervals[key]
    return a_low <= b_high and b_low <= a_high


def format_table(rows: list[Row], with_steps: bool = False) -> str:
    """A Markdown table; metric columns are the keys the evaluations produced (their names carry the extractor).

    A key a row lists as not defined shows as "not defined" (an infinite correspondence ratio: "inf,
    is the source"); "rank" orders the rows of one target (and budget) by KID, 1 = closest to the target,
    ≈ where the KID intervals do not resolve it from the rank above. A value is followed by its bootstrap interval.
    """
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.result.metrics if k not in keys]
    placed = ranks(rows)
    header = ["target", *(["steps"] if with_steps else []), "method", "rank (kid)", *keys, "adapt s", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [_cell(row.result, k) for k in keys]
        adapt_s = f"{row.adapt_s:.0f}" if row.method not in (SOURCE_ROW, IDEAL_ROW) else "-"
        steps = [str(row.steps)] if with_steps else []
        lines.append("| " + " | ".join([row.target, *steps, row.method, str(placed.get(i, "")), *cells, adapt_s, f"{row.result.elapsed_s:.0f}"]) + " |")
    return "\n".join(lines)


def _cell(result: EvalResult, key: str) -> str:
    if key in result.metrics:
        if key not in result.intervals:
            return f"{result.metrics[key]:.4f}"
        low, high = result.intervals[key]
        return f"{result.metrics[key]:.4f} [{low:.4f}, {high:.4f}]"
    reason = result.not_defined.get(key) or result.not_defined.get(key.split("_")[0], "")
    return "inf, is the source" if "is its source" in reason else ("not defined" if reason else "")


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the section under `heading` (up to the next "## " heading) replaced by `body`, or appended."""
    lines = text.splitlines()
    if heading not in lines:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{heading}\n\n{body.rstrip()}\n"
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = lines[end:]
    return "\n".join(lines[:start] + [heading, "", body.rstrip(), ""] + rest).rstrip("\n") + "\n"


def machine_note(args: argparse.Namespace, wall_s: float, command: str) -> list[str]:
    return [
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU, no GPU (torch {torch.__version__}, 1 thread per run); load average over "
        f"the last 15 min at the end: {os.getloadavg()[2]:.1f} (the runs' own processes included). Date: {datetime.date.today().isoformat()}.",
        f"Command: `{command}`; it took {wall_s / 60:.1f} min in all.",
    ]


def budget_note(args: argparse.Namespace, steps: str) -> str:
    decays = ", ".join(f"{n} steps: half-life {math.log(0.5) / math.log(load_config(None, [f'steps={n}']).ema_decay):.1f}" for n in sorted(set(_ints(steps))))
    return (
        f"Budget: {steps} adaptation steps per run (batch 4, seed {args.seed}; the paper uses 5000), source `{args.source}`, "
        f"default config (EMA decay follows the run length: {decays}). KID (and FID when defined) from {args.n_generated} samples "
        f"against {args.n_real} held-out target images; FID needs more than the feature dimension (2048 for the Inception) of each, "
        f"so rows are ranked by KID. Intra-cluster ST-LPIPS from {args.n_lpips} samples around the 10 shots; correspondence "
        f"(error and ratios) from {args.n_corr} samples; {args.workers} runs at a time."
    )


def _ints(text: str | int) -> list[int]:
    return [int(part) for part in str(text).split(",")]


def reading_guide() -> str:
    return (
        "Lower is better for FID, KID, corr_l1 and corr_stlpips; higher intra_stlpips means more diversity (a copy of the 10 shots "
        "scores ~0); the ratios `corr_edge_ratio` / `corr_stlpips_ratio` say how much closer G_t(z) is to G_s(z) than to "
        "G_s(z') of another z (edge maps / ST-LPIPS; 1 = no correspondence, higher is better; defined for every target). "
        "corr_l1 / corr_stlpips compare G_t(z) with transform(G_s(z)) (the paired distance; 0 is the ideal) and exist only "
        "where the target has a transform (the image-space toy targets and every closed-world target). On a closed-world "
        "target gap_<metric> = (source - generator) / (source - ideal): 0 is no adaptation, 1 the ideal T∘G_s. Brackets hold "
        "95% bootstrap intervals (metrics/intervals.py); FID has none."
    )


def section_body(args: argparse.Namespace, rows: list[Row], not_run: list[Job], wall_s: float, command: str) -> str:
    offline = sorted({name for row in rows for name in row.result.offline})
    extractors = sorted({name for row in rows for name in row.result.extractors.values()})
    notes = [*machine_note(args, wall_s, command), budget_note(args, str(args.steps)), f"Extractors: {', '.join(extractors)}."]
    if not_run:
        skipped = ", ".join(f"{target}/{method or 'source'}" for target, method, _ in not_run)
        limit = f" within `--time-limit {args.time_limit:g}` (minutes after which no new run starts)" if args.time_limit else ""
        notes.append(f"**Partial**: {len(rows)} of {len(rows) + len(not_run)} runs finished{limit}. Not run: {skipped}.")
    if args.source != "toy:faces":
        notes.append(f"**Source is `{args.source}`, not the shipped toy model**: numbers from another source are not comparable with a `toy:faces` run.")
    if args.set:
        notes.append(overrides_note(args.set))
    if offline:
        notes.append("Offline FID features were asked for (`--features offline`): the `_offline` numbers rank methods here but are not comparable with published FID/KID.")
    notes.append(
        reading_guide() + f" `{SOURCE_ROW}` is the toy source evaluated as it is, `{IDEAL_ROW}` a closed-world target's ideal. Grids (rows: "
        f"source, its transform where the target has one, then the methods in table order; same z and the source's noise per column) "
        f"are in `{args.out}/<target>/methods.png`."
    )
    return "\n\n".join(notes) + "\n\n" + format_table(rows)


def run_job(job: Job, args: argparse.Namespace) -> Row:
    """One table row in a worker process: the source as it is (method None), or adapt + evaluate (or, with --reuse, a finished run)."""
    torch.set_num_threads(1)  # the machine is shared; one thread per process is also the fastest for 64px models
    target, method, steps = job
    settings = settings_of(args)
    directory = run_dir(args.out, target, method, steps)
    record = directory / "bench.json"
    if args.reuse and record.exists():
        saved = json.loads(record.read_text())
        if reusable(saved, args, adapted=method not in (None, IDEAL_GENERATOR)):
            return Row(target, saved["method"], steps, _result_from_json(saved["result"]), saved["adapt_s"])
    real = np.load(real_features_path(args.out, target, settings, args.source))
    if method is None:
        generator, adapt_s, name = args.source, 0.0, SOURCE_ROW
    elif method == IDEAL_GENERATOR:
        generator, adapt_s, name = IDEAL_GENERATOR, 0.0, IDEAL_ROW
    else:
        generator, adapt_s, name = str(directory), adapt(args.source, target, method, steps, args.seed, args.set, directory), method
    source = None if closed_world(target) is not None else args.source  # a closed-world target brings its own
    result = evaluate(generator, target, source, args.metrics, settings, str(directory / "eval"), real_features=real)
    saved = {"method": name, "settings": asdict(settings), "source": args.source, "source_digest": source_digest(args.source), "seed": args.seed, "overrides": args.set, "adapt_s": adapt_s, "result": result.to_json()}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(saved, indent=1))
    return Row(target, name, steps, result, adapt_s)


def reusable(saved: dict, args: argparse.Namespace, adapted: bool) -> bool:
    """A saved row is this run's: same source model, seed and evaluation settings, and for an adapted row
    the same `--set` (the source and the ideal do not depend on it)."""
    same_source = saved["source"] == args.source and saved.get("source_digest") == source_digest(args.source)
    same_run = same_source and saved["seed"] == args.seed and (not adapted or saved.get("overrides", []) == args.set)
    return same_run and saved["settings"] == asdict(settings_of(args))


def _result_from_json(data: dict) -> EvalResult:
    fields = {k: v for k, v in data.items() if k != "offline_extractors"}
    intervals = {key: tuple(bounds) for key, bounds in fields["intervals"].items()}  # JSON has no tuples
    return EvalResult(**{**fields, "intervals": intervals, "settings": EvalSettings(**fields["settings"])})


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
                print(f"{row.target} / {row.method} / {row.steps} steps: {values}; adapt {row.adapt_s:.0f} s, eval {row.result.elapsed_s:.0f} s", flush=True)
    return [done[job] for job in jobs if job in done], pending


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ("python bench/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    # Sources (and ideals) first, then one method on every target at a time: a --time-limit drops whole methods, not targets.
    jobs = [(target, None, args.steps) for target in args.targets]
    jobs += [(target, IDEAL_GENERATOR, args.steps) for target in args.targets if closed_world(target) is not None]
    jobs += [(target, method, args.steps) for method in args.methods for target in args.targets]
    started = time.perf_counter()
    cache_real_features(args, args.targets)
    rows, not_run = run_jobs(jobs, args)
    rows.sort(key=lambda row: (args.targets.index(row.target), row.method != SOURCE_ROW, row.method != IDEAL_ROW))
    torch.set_num_threads(1)
    for target in sorted({row.target for row in rows}, key=args.targets.index):
        generators = {row.method: str(run_dir(args.out, target, row.method, args.steps)) for row in rows if row.target == target and row.method not in (SOURCE_ROW, IDEAL_ROW)}
        save_png(str(target_dir(args.out, target) / "methods.png"), to_pil(methods_grid(args.source, target, generators)))
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
