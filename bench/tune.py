"""Benchmark of `fsg tune` on a search file (default: the shipped toy_cdc.yaml), in one process.

1. The search itself (Ray Tune over Ray Train trials, local cluster): wall time and trials per hour.
2. The same trials back to back without Ray: each trial's config trained for the steps it ran there,
   through fsg adapt's one-process path (run_adaptation + DirectorySink, one torch thread as in a
   one-CPU Train worker), with the same validation at the same checkpoints. Tune's overhead per
   trial = sum of the trials' Tune wall times (trial start to last report) / sum of the baseline's.
3. The scheduler's (ASHA's or sha's) share of a full search's trial-steps: the steps the trials ran / (trials x max_t).
4. With --compare-full: the same search without a scheduler (the searcher is seeded by base.seed, so
   it samples the same configurations), every trial to max_t; whether the scheduler's best is the full
   search's best or inside its interval, where it ranks there, and for every report step the rank
   correlation (Spearman) across trials between the metric there and at max_t: what a rung can know.
   Rungs measure G_ema without the source's share (fsg_ray/adapt/ema.py); the baseline is the same
   checkpoints' stored G_ema, measured again here at the scheduler's rungs.

    python bench/tune.py [--config tune_configs/toy_cdc.yaml] [--set KEY=VALUE ...] [--out DIR] [--compare-full] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fsg_ray import storage
from fsg_ray.adapt.run import DirectorySink, RunSpec, export_final_generator, run_adaptation
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, checkpoint_dir_name
from fsg_ray.eval.validation import measure, reported_key
from fsg_ray.ray.halving import survivors
from fsg_ray.ray.tune import run_search, validation_of
from fsg_ray.search.config import SearchConfig, load_search_config
from fsg_ray.search.report import SearchMeta, final_rows, plain_value, read_results


def baseline_trial(search: SearchConfig, params: dict, steps: int, report_steps: list[int], out: str) -> float:
    """Seconds to train one trial's config for `steps` in this process and validate its checkpoints."""
    config = dataclasses.replace(search.trial_config(params), steps=steps)
    validate = validation_of(search)
    started = time.perf_counter()
    run_adaptation(RunSpec(search.source, search.target, config), DirectorySink(out), progress=False)
    export_final_generator(out)
    for step in report_steps:
        validate(storage.join(out, checkpoint_dir_name(step), CHECKPOINT_FILE))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune_configs/toy_cdc.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="where the search and the baseline runs go (default: a temp dir)")
    parser.add_argument("--compare-full", action="store_true", help="also run the search without a scheduler and compare the best configurations")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out 2. (Tune's overhead): it trains every trial again in this process")
    args = parser.parse_args()
    search = load_search_config(args.config, args.set)
    out = args.out or tempfile.mkdtemp(prefix="bench_tune_")

    started = time.perf_counter()
    summary = run_search(search, str(Path(out) / "search"))
    search_wall = time.perf_counter() - started
    frame, meta = read_results(summary.run_uri)
    finals = final_rows(frame)

    torch.set_num_threads(1)  # a one-CPU Train worker runs one torch thread
    tune_s, base_s, steps_run = 0.0, 0.0, 0
    print(f"\n{'trial':<14}{'status':<15}{'steps':>6}{'tune s':>9}{'adapt s':>9}{'ratio':>7}  {meta.metric}")
    for trial_id, last in finals.iterrows():
        reports = frame[frame["trial_id"] == trial_id]
        params = {path: plain_value(last[path]) for path in meta.params}
        steps = int(last["step"])
        plain = math.nan if args.skip_baseline else baseline_trial(search, params, steps, [int(s) for s in reports["step"]], str(Path(out) / "baseline" / trial_id))
        tune_s, base_s, steps_run = tune_s + float(last["time_total_s"]), base_s + plain, steps_run + steps
        print(f"{trial_id:<14}{last['status']:<15}{steps:>6}{last['time_total_s']:>9.1f}{plain:>9.1f}{last['time_total_s'] / plain:>7.2f}  {last[meta.metric]:.4f}")

    full = len(finals) * search.scheduler.max_t
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch thread(s) in the baseline, {search.max_concurrent_trials} concurrent trial(s) in the search")
    print(f"search wall: {search_wall:.0f} s for {len(finals)} trials ({summary.statuses}) -> {len(finals) / search_wall * 3600:.1f} trials/hour")
    if not args.skip_baseline:
        print(f"Tune overhead per trial: sum of trial wall times {tune_s:.0f} s / same trials back to back with fsg adapt {base_s:.0f} s = {tune_s / base_s:.2f}")
    print(f"{search.scheduler.type} trial-steps: {steps_run} of a full search's {full} ({steps_run / full:.0%}); best {summary.best_trial} {meta.metric}={summary.best_value:.4f}")
    if args.compare_full:
        compare_full(args, out, finals, meta, summary.best_trial)
    print(f"outputs: {out}")


def successive_halving(frame: pd.DataFrame, metric: str, mode: str, grace: int, factor: int, max_t: int) -> tuple[int, list[str]]:
    """Synchronous successive halving (scheduler sha) replayed on a full search's recorded curves: the
    trial-steps it would train and the trials it would run to max_t (the best floor(n / factor) at each rung)."""
    alive, used, reached, rung = sorted(frame["trial_id"].unique()), 0, 0, grace
    while True:
        rung = min(rung, max_t)
        used += len(alive) * (rung - reached)
        if rung == max_t:
            return used, alive
        at_rung = frame[(frame["step"] == rung) & frame["trial_id"].isin(alive)].set_index("trial_id")[metric]
        keep = survivors(len(alive), factor)
        alive = sorted(at_rung.sort_values(ascending=mode == "min").index[:keep])
        reached, rung = rung, rung * factor


def print_halving_table(frame: pd.DataFrame, meta: SearchMeta, max_t: int, every: int) -> None:
    finals = final_rows(frame)
    best = finals[meta.metric].idxmin() if meta.mode == "min" else finals[meta.metric].idxmax()
    full = len(finals) * max_t
    print(f"\nsuccessive halving replayed on the full search's curves (full best: {best})")
    print("| grace | factor | trial-steps | share | full best kept | trials to max_t |")
    print("|---|---|---|---|---|---|")
    for grace in range(every, max_t, every):
        for factor in (2, 3, 4):
            if any(r % every for r in (grace * factor**k for k in range(4)) if r < max_t):
                continue  # a rung between reports cannot be replayed
            used, kept = successive_halving(frame, meta.metric, meta.mode, grace, factor, max_t)
            print(f"| {grace} | {factor} | {used} | {used / full:.0%} | {'yes' if best in kept else 'no'} | {len(kept)} |")


def rung_correlations(frame: pd.DataFrame, metric: str, max_t: int) -> pd.Series:
    """Per report step: Spearman's rank correlation across trials between the metric there and at max_t."""
    by_step = frame.pivot_table(index="trial_id", columns="step", values=metric)
    return by_step.drop(columns=max_t).corrwith(by_step[max_t], method="spearman")


def stored_ema_correlations(frame: pd.DataFrame, search: SearchConfig, rungs: list[int]) -> pd.Series:
    """Per rung: the Spearman of `rung_correlations` with every trial's checkpoint there measured as its stored G_ema."""
    metric = reported_key(search.metric.name, search.eval.features)
    stored = frame[frame["step"].isin(rungs)].copy()
    stored[metric] = [
        measure(row.checkpoint, search.validation, search.source, search.eval.metrics, search.eval.n_generated, search.eval.features, "cpu", rung=False).metrics[metric]
        for row in stored.itertuples()
    ]
    return rung_correlations(pd.concat([stored, frame[frame["step"] == search.scheduler.max_t]]), metric, search.scheduler.max_t)


def scheduler_rungs(search: SearchConfig) -> list[int]:
    """The steps where the scheduler compares trials: grace_period * reduction_factor^k below max_t."""
    s = search.scheduler
    return [step for step in (round(s.grace_period * s.reduction_factor**k) for k in range(32)) if step < s.max_t]


def params_of(row: pd.Series, names: list[str]) -> tuple:
    return tuple(plain_value(row[name]) for name in names)


def compare_full(args: argparse.Namespace, out: str, picked_finals: pd.DataFrame, meta: SearchMeta, picked_best: str | None) -> None:
    """The search again without a scheduler: does the scheduler's best configuration win when every trial runs to max_t?"""
    full_search = load_search_config(args.config, [*args.set, "scheduler.type=none"])
    started = time.perf_counter()
    full = run_search(full_search, str(Path(out) / "full"))
    full_frame, _ = read_results(full.run_uri)
    full_finals = final_rows(full_frame)
    picked_configs = sorted(params_of(row, meta.params) for _, row in picked_finals.iterrows())
    full_configs = sorted(params_of(row, meta.params) for _, row in full_finals.iterrows())
    ranked = full_finals.sort_values(meta.metric, ascending=meta.mode == "min")
    print(f"\nfull search (no scheduler): {time.perf_counter() - started:.0f} s, {len(full_finals)} trials, {int(full_finals['step'].sum())} trial-steps; "
          f"same sampled configurations as the scheduled search: {picked_configs == full_configs}")
    print_halving_table(full_frame, meta, full_search.scheduler.max_t, full_search.eval.every)
    rungs = scheduler_rungs(full_search)
    stored = stored_ema_correlations(full_frame, full_search, rungs)
    decay = full_search.base.ema_decay
    print("\n| report step | Spearman with the metric at max_t | the same, stored G_ema (baseline) | source share of G_ema |\n|---|---|---|---|")
    for step, rho in rung_correlations(full_frame, meta.metric, full_search.scheduler.max_t).items():
        baseline = f"{stored[step]:.2f}" if step in stored.index else "not measured (no rung)"
        print(f"| {step} | {rho:.2f} | {baseline} | {decay**step:.0%} |")
    if picked_best is not None:
        best_full = ranked.iloc[0]
        low, high = (best_full.get(f"{meta.metric}_{end}") for end in ("low", "high"))
        picked_value = full_finals.loc[[i for i, row in full_finals.iterrows() if params_of(row, meta.params) == params_of(picked_finals.loc[picked_best], meta.params)][0], meta.metric]
        inside = low is not None and low <= picked_value <= high
        print(f"the scheduler's pick ends the full search at {meta.metric}={picked_value:.4f}; the full best {best_full[meta.metric]:.4f} has interval [{low}, {high}]: the pick inside it: {inside}")
    print(f"| rank | {' | '.join(meta.params)} | {meta.metric} at max_t | the scheduler's best |")
    print(f"|---|{'---|' * len(meta.params)}---|---|")
    best_params = params_of(picked_finals.loc[picked_best], meta.params) if picked_best is not None else None
    for rank, (_, row) in enumerate(ranked.iterrows(), 1):
        params = params_of(row, meta.params)
        print(f"| {rank} | {' | '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in params)} | {row[meta.metric]:.4f} | {'yes' if params == best_params else ''} |")


if __name__ == "__main__":
    main()
