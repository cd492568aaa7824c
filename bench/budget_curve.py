"""What a budget buys: CDC and TGAN adapted from the toy source for several step counts, one table per target.

Each (target, method, steps) is a fresh run with the default config (so the EMA decay follows each run's
length, as `fsg adapt` does) and is evaluated like bench/quality.py: KID with the FID Inception (FID
when the sample counts define it), intra-cluster ST-LPIPS for diversity, both correspondence measures
(the ratios for every target, the error to transform(G_s(z)) for sketch and painting). Step 0 is the
unadapted source. Writes the table and a plot (docs/img/budget_curve.png) and refreshes the
"## budget curve (toy benchmark)" section of bench/RESULTS.md. With --reuse, runs bench/quality.py
already made with the same settings (same --out) are read instead of repeated.

    .venv/bin/python bench/budget_curve.py --reuse          # after bench/quality.py, sharing its 200-step runs
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from quality import (  # noqa: E402  (bench/ is on sys.path when this file runs)
    DEFAULT_N_CORR,
    DEFAULT_N_GENERATED,
    DEFAULT_N_LPIPS,
    DEFAULT_N_REAL,
    FEATURES,
    TARGETS,
    Row,
    budget_note,
    cache_real_features,
    format_table,
    machine_note,
    reading_guide,
    replace_section,
    run_jobs,
    _ints,
    _subset,
    add_set_flag,
    check_overrides,
    overrides_note,
    parse_metrics,
)

SECTION = "## budget curve (toy benchmark)"
METHODS = ("cdc", "tgan")
DEFAULT_BUDGETS = "50,100,200"
DEFAULT_TARGETS = "closed:sketch,toy:babies"
PLOTTED = ("kid", "gap_kid", "gap_corr_stlpips", "intra_stlpips", "corr_edge_ratio", "corr_stlpips_ratio", "corr_l1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default=DEFAULT_BUDGETS, help="comma-separated step counts, one fresh run each")
    p.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--n-generated", type=int, default=DEFAULT_N_GENERATED, help="samples for KID (and FID when above the feature dims)")
    p.add_argument("--n-real", type=int, default=DEFAULT_N_REAL, help="held-out target images for KID/FID")
    p.add_argument("--features", choices=FEATURES, default="inception", help="FID/KID features")
    p.add_argument("--n-lpips", type=int, default=DEFAULT_N_LPIPS, help="samples for intra-cluster ST-LPIPS")
    p.add_argument("--n-corr", type=int, default=DEFAULT_N_CORR, help="samples for the correspondence error and ratios")
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one process and one thread each")
    p.add_argument("--time-limit", type=float, default=30.0, help="minutes after which no new run starts (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="toy:faces")
    p.add_argument("--out", default="out/bench_quality", help="runs go here (bench/quality.py's default, to share runs)")
    p.add_argument("--results", default="bench/RESULTS.md", help="file whose budget-curve section is refreshed; '' to skip")
    p.add_argument("--plot", default="docs/img/budget_curve.png", help="where the plot goes; '' to skip")
    p.add_argument("--reuse", action="store_true", help="reuse runs under --out that finished these steps with these settings")
    p.add_argument("--metrics", help="comma-separated subset of fsg eval's metrics (default: every one defined)")
    add_set_flag(p)
    args = p.parse_args(argv)
    check_overrides(p, args.set)
    args.metrics = parse_metrics(args.metrics) if args.metrics else None
    args.targets = _subset(args.targets, TARGETS, "--targets")
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    args.budgets = sorted(set(_ints(args.budgets)))
    if min(args.budgets) < 1:
        p.error(f"--budgets: step counts must be positive, got {args.budgets}")
    return args


def figure(rows: list[Row], targets: list[str], methods: list[str]) -> plt.Figure:
    """One column per target, one panel per metric that target defines (babies has no image transform, so no
    corr_l1); a line per method over steps, starting at the source (step 0). Slots a target leaves over are
    removed rather than drawn empty."""
    keys = {target: [k for k in PLOTTED if any(row.target == target and k in row.result.metrics for row in rows)] for target in targets}
    n_rows = max(1, *(len(k) for k in keys.values()))
    fig, axes = plt.subplots(n_rows, len(targets), figsize=(3.2 * len(targets), 2.2 * n_rows), squeeze=False)
    for col, target in enumerate(targets):
        source = [row for row in rows if row.target == target and row.steps == 0]
        for line, method in enumerate(methods):
            runs = source + sorted((row for row in rows if row.target == target and row.method == method), key=lambda row: row.steps)
            for r, key in enumerate(keys[target]):
                points = [(row.steps, row.result.metrics[key]) for row in runs if key in row.result.metrics]
                if points:
                    axes[r][col].plot(*zip(*points), marker="o", label=method, color=f"C{line}")
        for r, key in enumerate(keys[target]):
            axes[r][col].set_title(f"{target}: {key}", fontsize=8)
            axes[r][col].tick_params(labelsize=7)
        for r in range(len(keys[target]), n_rows):
            fig.delaxes(axes[r][col])
        if keys[target]:
            axes[len(keys[target]) - 1][col].set_xlabel("adaptation steps", fontsize=8)
    if fig.axes:
        fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(rows: list[Row], targets: list[str], methods: list[str], path: str) -> None:
    fig = figure(rows, targets, methods)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ("python bench/budget_curve.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    jobs = [(target, None, 0) for target in args.targets]
    # Smallest budgets first: a --time-limit drops the longest runs, and every method keeps the same points.
    jobs += [(target, method, steps) for steps in args.budgets for target in args.targets for method in args.methods]
    started = time.perf_counter()
    cache_real_features(args, args.targets)
    rows, not_run = run_jobs(jobs, args)
    rows.sort(key=lambda row: (args.targets.index(row.target), row.steps, row.method))
    wall_s = time.perf_counter() - started
    table = format_table(rows, with_steps=True)
    print(table)
    print(f"budget curve wall time: {wall_s / 60:.1f} min")
    if args.plot:
        plot(rows, args.targets, args.methods, args.plot)
    if args.results:
        notes = [*machine_note(args, wall_s, command), budget_note(args, ",".join(map(str, args.budgets)))]
        if args.set:
            notes.append(overrides_note(args.set))
        if not_run:
            notes.append(f"**Partial**: {len(rows)} of {len(jobs)} runs finished within `--time-limit {args.time_limit:g}`. Not run: "
                         + ", ".join(f"{t}/{m or 'source'}/{s}" for t, m, s in not_run) + ".")
        notes.append(reading_guide() + " Steps 0 is the unadapted source; `rank (kid)` compares the methods at one budget."
                     + (f" Plot: `{args.plot}`." if args.plot else ""))
        path = Path(args.results)
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        path.write_text(replace_section(text, SECTION, "\n\n".join(notes) + "\n\n" + table))
        print(f"refreshed {SECTION!r} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
