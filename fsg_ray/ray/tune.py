"""`fsg tune`: a Ray Tune search whose trials are Ray Train runs of the unchanged adaptation loop.

A trial is a function that builds the same TorchTrainer as `fsg adapt --workers N`
(fsg_ray.ray.train.make_trainer) for the run URI `RUN_URI/trials/<trial_id>`, whose last part, the
trial id, is also the Train run's name: a restored trial resumes its Train run from the last committed
checkpoint. Every checkpoint report carries validation metrics (fsg_ray.eval.validation) and reaches Tune
through TuneReportCallback, one Tune result per checkpoint, so the scheduler (ASHA, sha) counts training steps. Tune's own
experiment state lives at `RUN_URI/tune`; `Tuner.restore` picks it up after the driver died.
(RAY_NOTES: `Tuner(TorchTrainer)` fails in Ray 2.60, and the dashboard must stay on, or the next
trial waits forever for the placement group of a trial ASHA stopped.)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import posixpath
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import BasicVariantGenerator

from fsg_ray import storage
from fsg_ray.adapt.run import EXPORT_FILE, RunSpec, check_inputs, export_final_generator
from fsg_ray.config import ConfigError
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, checkpoint_dir_name
from fsg_ray.ray.cluster import connect
from fsg_ray.ray.halving import SuccessiveHalving
from fsg_ray.ray.inputs import ShippedInputs
from fsg_ray.ray.train import Scaling, make_trainer, pin_local_inputs, ray_storage, ship_inputs
from fsg_ray.search.config import SearchConfig, Space, first_difference
from fsg_ray.search.report import RESULTS_FILE, SearchMeta, SearchSummary, plain_value, read_results, search_meta, write_results, write_search_outputs
from fsg_ray.eval.validation import Validation, reported_key

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
TRIALS_DIR = "trials"
SEARCH_FILE = "search.yaml"
# The trial function only waits on its TorchTrainer (whose controller takes no CPU); the workers hold the CPUs.
TRIAL_DRIVER_CPUS = 0.1


def tune_space(space: Space) -> Any:
    """A search-file space as a Tune domain."""
    if space.space == "grid_search":
        return tune.grid_search(list(space.values))
    if space.space == "choice":
        return tune.choice(list(space.values))
    if space.space == "quniform":
        return tune.quniform(space.lower, space.upper, space.q)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[space.space](space.lower, space.upper)


def trial_uri(run_uri: str, trial_id: str) -> str:
    return storage.join(run_uri, TRIALS_DIR, trial_id)


def scaling(search: SearchConfig) -> Scaling:
    t = search.trial
    return Scaling(workers=t.workers, gpus_per_worker=t.gpus_per_worker, cpus_per_worker=t.cpus_per_worker, max_failures=t.max_failures)


def validation_of(search: SearchConfig) -> Validation:
    return Validation(search.validation, search.source, search.eval.metrics, search.eval.n_generated, search.eval.features)


def run_trial(params: dict[str, Any], search: SearchConfig, run_uri: str, inputs: ShippedInputs) -> None:
    """One trial: a TorchTrainer run of the adaptation loop at RUN_URI/trials/<trial_id>, then its generator.pt."""
    uri = trial_uri(run_uri, tune.get_context().get_trial_id())
    spec = RunSpec(search.source, search.target, search.trial_config(params))
    make_trainer(spec, uri, scaling(search), inputs, validation_of(search), callbacks=[TuneReportCallback()]).fit()
    export_final_generator(uri)


def with_absolute_uris(search: SearchConfig) -> SearchConfig:
    """Local paths made absolute: trials run in Ray's working directory, maybe on another node."""
    spec = pin_local_inputs(RunSpec(search.source, search.target, search.base))
    validation = search.eval.validation
    if validation is not None and not validation.startswith("toy:"):
        validation = storage.absolute(validation)
    return dataclasses.replace(search, source=spec.source, target=spec.target, eval=dataclasses.replace(search.eval, validation=validation))


def record_or_check_search(search: SearchConfig, run_uri: str) -> None:
    """First run: store the search at RUN_URI/search.yaml. Rerun: refuse a search that differs, naming the key."""
    uri = storage.join(run_uri, SEARCH_FILE)
    wanted = search.to_plain()
    if not storage.exists(uri):
        storage.write_bytes(uri, yaml.safe_dump(wanted, sort_keys=False).encode())
        return
    stored = yaml.safe_load(storage.read_bytes(uri))
    difference = first_difference(stored, wanted)
    if difference is not None:
        key, old, new = difference
        raise ConfigError(f"{run_uri} holds a search started with another config: {key} was {old!r}, now {new!r} (use another --out to start a new search)")


def tune_config(search: SearchConfig, metric: str) -> tune.TuneConfig:
    scheduler = None
    s = search.scheduler
    if s.type == "asha":
        scheduler = tune.schedulers.ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    elif s.type == "sha":
        scheduler = SuccessiveHalving(s.time_attr, metric, search.metric.mode, s.grace_period, int(s.reduction_factor), s.max_t, search.num_trials, search.max_concurrent_trials)
    # Both searchers draw from base.seed: the same file samples the same configurations, with or without a scheduler.
    if search.searcher.type == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, max_concurrent = OptunaSearch(seed=search.base.seed), search.max_concurrent_trials
    else:
        # sha admits trials itself: a searcher's limit would count its paused trials and stall the first rung.
        limit = 0 if s.type == "sha" else search.max_concurrent_trials
        search_alg, max_concurrent = BasicVariantGenerator(max_concurrent=limit, random_state=search.base.seed), None
    return tune.TuneConfig(
        metric=metric, mode=search.metric.mode, scheduler=scheduler, search_alg=search_alg,
        num_samples=search.num_samples, max_concurrent_trials=max_concurrent,
    )


def experiment_path(run_uri: str) -> tuple[str, pafs.FileSystem | None]:
    """Where Tune keeps the experiment state of the search at `run_uri`, as Tuner.restore wants it."""
    storage_path, name, filesystem = ray_storage(storage.join(run_uri, TUNE_DIR))
    return posixpath.join(storage_path, name), filesystem


def tuner(search: SearchConfig, run_uri: str, metric: str, inputs: ShippedInputs) -> tune.Tuner:
    """A new Tuner for the search, or the one restored from RUN_URI/tune when an earlier driver left it there.

    `inputs`: the search's local source and target, shipped by this driver (trials may run on any node).
    """
    trainable = tune.with_resources(tune.with_parameters(run_trial, search=search, run_uri=run_uri, inputs=inputs), {"cpu": TRIAL_DRIVER_CPUS})
    experiment, filesystem = experiment_path(run_uri)
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.info("resuming the search in %s", storage.join(run_uri, TUNE_DIR))
        # The run config, LiveResults included, comes back from the experiment state.
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, storage_filesystem=filesystem)
    return tune.Tuner(
        trainable,
        param_space={path: tune_space(space) for path, space in search.search.items()},
        tune_config=tune_config(search, metric),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=posixpath.dirname(experiment),
            storage_filesystem=filesystem,
            # A trial whose Train run gave up (or whose process died) starts again, resuming its Train run.
            failure_config=tune.FailureConfig(max_failures=search.trial.max_failures),
            callbacks=[LiveResults(search, run_uri, search_meta(search, metric))],
        ),
    )


def _trial_status(steps_done: int, steps: int, error: bool, running: bool = False) -> str:
    if error:
        return "error"
    if running:
        return "running"
    return "completed" if steps_done >= steps else "stopped_early"


@dataclasses.dataclass(frozen=True)
class TrialReports:
    """What one trial reported so far: Tune's result rows (metrics and bookkeeping), as a frame."""

    trial_id: str
    config: dict[str, Any]
    reports: pd.DataFrame
    error: bool
    running: bool = False


def results_frame(trials: list[TrialReports], search: SearchConfig, run_uri: str) -> pd.DataFrame:
    """One row per trial and report: trial, status, parameters, step, every reported number, checkpoint URI."""
    frames = []
    for trial in trials:
        reports = trial.reports
        if reports.empty or "step" not in reports:
            continue
        params = {path: trial.config[path] for path in search.search}
        status = _trial_status(int(reports["step"].max()), search.trial_config(params).steps, trial.error, trial.running)
        reported = reports.drop(columns=[c for c in reports.columns if c.startswith("config/") or c in TUNE_BOOKKEEPING])
        frame = pd.DataFrame({"trial_id": trial.trial_id, "status": status}, index=reported.index)
        for path, value in params.items():
            frame[path] = value
        frame = pd.concat([frame, reported], axis=1)
        # The file itself: load_generator, fsg sample and fsg eval take it as is.
        frame["checkpoint"] = [storage.join(trial_uri(run_uri, trial.trial_id), checkpoint_dir_name(int(step)), CHECKPOINT_FILE) for step in reports["step"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["trial_id", "step"], ignore_index=True) if frames else pd.DataFrame()


def grid_reports(grid: tune.ResultGrid) -> list[TrialReports]:
    """The finished experiment's trials, as Tune kept them."""
    trials = []
    for result in grid:
        reports = result.metrics_dataframe
        if reports is None or reports.empty or result.config is None:
            continue
        trials.append(TrialReports(str(reports["trial_id"].iloc[-1]), result.config, reports, result.error is not None))
    return trials


class LiveResults(tune.Callback):
    """Keeps RUN_URI/results.parquet current while the search runs: rewritten at every report and when a
    trial ends, so a search in progress, or one whose driver died, can be read (and `fsg tune --report`
    rendered) before the final tables. A resumed search starts from the file and keeps its rows: Tune
    empties the result log of a trial it restarts, and this file is then the only record of its reports.

    Tune pickles its callbacks with the experiment and a restored search runs the unpickled copy, so
    the state is (re)built in `setup`, which every start and restore calls.
    """

    def __init__(self, search: SearchConfig, run_uri: str, meta: SearchMeta):
        self.search, self.run_uri, self.meta = search, run_uri, meta

    def setup(self, **info: Any) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.state: dict[str, tuple[dict[str, Any], bool, bool]] = {}  # trial id -> (config, error, running)
        self.earlier = read_results(self.run_uri)[0] if storage.exists(storage.join(self.run_uri, RESULTS_FILE)) else pd.DataFrame()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.rows.setdefault(trial.trial_id, []).append({k: v for k, v in result.items() if not isinstance(v, dict)})
        self.state[trial.trial_id] = (trial.config, False, True)
        self.write()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = (trial.config, False, False)
        self.write()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = (trial.config, True, False)
        self.write()

    def write(self) -> None:
        trials = [TrialReports(trial_id, config, pd.DataFrame(self.rows.get(trial_id, [])), error, running)
                  for trial_id, (config, error, running) in self.state.items()]
        frame = with_rows_of(results_frame(trials, self.search, self.run_uri), self.earlier)
        if not frame.empty:
            write_results(frame, self.meta, self.run_uri)


def with_rows_of(frame: pd.DataFrame, earlier: pd.DataFrame) -> pd.DataFrame:
    """`frame` and the rows of `earlier` for (trial, step) pairs that `frame` does not have."""
    if earlier.empty:
        return frame
    known = set(zip(frame["trial_id"], frame["step"])) if not frame.empty else set()
    missing = earlier[[(t, s) not in known for t, s in zip(earlier["trial_id"], earlier["step"])]]
    if missing.empty:
        return frame
    return pd.concat([frame, missing], ignore_index=True).sort_values(["trial_id", "step"], ignore_index=True)


# Tune's own fields in every result; what a trial reported is kept.
TUNE_BOOKKEEPING = {
    "trial_id", "checkpoint_path", "timestamp", "done", "training_iteration", "date", "pid", "hostname", "node_ip",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint",
}


def export_missing_generators(frame: pd.DataFrame, run_uri: str) -> None:
    """generator.pt for every completed trial: the trial writes it after training, unless the scheduler's stop at max_t ended it first."""
    for trial_id in frame.loc[frame["status"] == "completed", "trial_id"].unique():
        uri = trial_uri(run_uri, trial_id)
        if not storage.exists(storage.join(uri, EXPORT_FILE)):
            export_final_generator(uri)


def with_earlier_reports(frame: pd.DataFrame, search: SearchConfig, run_uri: str) -> pd.DataFrame:
    """The grid's rows and those RUN_URI/results.parquet holds that the grid lacks.

    Tune truncates the result log of a trial that it restarts without a Tune checkpoint (ours resume from
    their Train run instead), so after a restored driver the grid can miss what a trial reported before
    (a trial sha promoted, one that was running); LiveResults wrote those rows as they came.
    """
    if not storage.exists(storage.join(run_uri, RESULTS_FILE)):
        return frame
    merged = with_rows_of(frame, read_results(run_uri)[0])
    if len(merged) == len(frame):
        return frame
    status = frame.groupby("trial_id")["status"].last().to_dict() if not frame.empty else {}
    for trial_id, rows in merged.groupby("trial_id"):
        if trial_id not in status:
            params = {path: plain_value(rows[path].iloc[-1]) for path in search.search}
            status[trial_id] = _trial_status(int(rows["step"].max()), search.trial_config(params).steps, error=False)
    merged["status"] = merged["trial_id"].map(status)
    return merged


def run_search(search: SearchConfig, run_uri: str) -> SearchSummary:
    """Run (or resume) the search into `run_uri`, then write results.parquet, best.yaml, best/, search.png, report.html."""
    search, run_uri = with_absolute_uris(search), storage.absolute(run_uri)
    check_inputs(RunSpec(search.source, search.target, search.base))
    record_or_check_search(search, run_uri)
    t = search.trial
    connect(min_cpus=math.ceil(search.max_concurrent_trials * (t.workers * t.cpus_per_worker + TRIAL_DRIVER_CPUS)))
    metric = reported_key(search.metric.name, search.eval.features)
    inputs = ship_inputs(RunSpec(search.source, search.target, search.base))
    grid = tuner(search, run_uri, metric, inputs).fit()
    frame = with_earlier_reports(results_frame(grid_reports(grid), search, run_uri), search, run_uri)
    if frame.empty:
        raise RuntimeError(f"no trial of {run_uri} reported a result; errors: {[str(e) for e in grid.errors]}")
    export_missing_generators(frame, run_uri)
    return write_search_outputs(frame, search, search_meta(search, metric), run_uri)
