"""Synchronous successive halving as a Ray Tune scheduler: every trial reaches a rung before any is judged there.

Ray's ASHA judges a trial at a rung against the trials already recorded there, so the first trials to
arrive are promoted whatever they score, and with few trials run in turns that costs more than a
third of a full search (bench/RESULTS.md, "tune"). Here a trial that reports at a rung is paused; when
the last live trial reports there, the best floor(n / factor) (at least one) continue from that
checkpoint and the rest are stopped. Trials train only when this scheduler admits them, at most
`max_concurrent` at a time: a searcher's concurrency limit would count the paused trials and never
hand out the ones that have still to reach the first rung.

A paused trial leaves no Tune checkpoint; when admitted again its function builds the same Train run
(named by the trial id), which resumes from the rung's committed checkpoint (fsg_ray.ray.tune).
The scheduler keeps only which rungs it has judged: the rest is read off the trials' statuses and last
reports, so a restored search (Tuner.restore builds a fresh scheduler) finds its rungs again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

LIVE = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)


def rungs_of(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The steps where trials are judged: grace, grace * factor, ... below max_t."""
    rungs, rung = [], grace_period
    while rung < max_t:
        rungs.append(rung)
        rung *= reduction_factor
    return rungs


def survivors(n: int, reduction_factor: int) -> int:
    """How many of the n trials judged at a rung continue: floor(n / factor), at least one."""
    return max(1, n // reduction_factor)


class SuccessiveHalving(FIFOScheduler):
    def __init__(self, time_attr: str, metric: str, mode: str, grace_period: int, reduction_factor: int, max_t: int, num_trials: int, max_concurrent: int):
        super().__init__()
        self.time_attr, self._metric, self._mode = time_attr, metric, mode
        self.reduction_factor, self.max_t = reduction_factor, max_t
        self.rungs = rungs_of(grace_period, reduction_factor, max_t)
        self.num_trials, self.max_concurrent = num_trials, max_concurrent
        self.judged: set[int] = set()
        self._judging = False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # The search file names the metric; Tune's own (the same one) changes nothing here.
        return True

    # --- what the trials' reports say ---------------------------------------------------------------

    @staticmethod
    def _report(trial: Trial, current: tuple[Trial, dict] | None = None) -> dict:
        """The trial's last report: for `current`, the one Tune is handing in now (not yet its last_result)."""
        if current is not None and trial is current[0]:
            return current[1]
        return trial.last_result or {}

    def _step(self, trial: Trial, current: tuple[Trial, dict] | None = None) -> int:
        return int(self._report(trial, current).get(self.time_attr, 0))

    def _is_judged(self, rung: int, trials: list[Trial]) -> bool:
        """Judged here, or before a restore: a trial went past the rung, or one was stopped on it."""
        if rung in self.judged:
            return True
        return any(self._step(t) > rung and t.status != Trial.ERROR or t.status == Trial.TERMINATED and self._step(t) == rung for t in trials)

    def _waiting_rung(self, step: int, trials: list[Trial]) -> int | None:
        """The first rung at or below `step` not yet judged: where a trial at `step` has to wait."""
        return next((rung for rung in self.rungs if rung <= step and not self._is_judged(rung, trials)), None)

    def _score(self, trial: Trial, current: tuple[Trial, dict] | None = None) -> float:
        """Higher is better; a trial without a number ranks last."""
        value = self._report(trial, current).get(self._metric)
        if value is None or math.isnan(float(value)):
            return -math.inf
        return float(value) if self._mode == "max" else -float(value)

    def _kept(self, rung: int, trials: list[Trial], current: tuple[Trial, dict] | None = None) -> set[str]:
        """The trials that go on from `rung`: survivors(n) of the n that reached it. Those already past it
        went on; the rest are the best of the ones still on it. Derived from the reports alone, because
        Tune's snapshot keeps a paused trial that was stopped as PAUSED: a restored search stops it again."""
        reached = [t for t in trials if t.status != Trial.ERROR and self._step(t, current) >= rung]
        past = {t.trial_id for t in reached if self._step(t, current) > rung}
        on_rung = [t for t in reached if self._step(t, current) == rung and t.status in LIVE]
        on_rung.sort(key=lambda t: self._score(t, current), reverse=True)
        return past | {t.trial_id for t in on_rung[: max(0, survivors(len(reached), self.reduction_factor) - len(past))]}

    # --- Tune's calls -------------------------------------------------------------------------------

    def on_trial_add(self, tune_controller: "TuneController", trial: Trial) -> None:
        # Tune starts every PENDING trial it has resources for; a paused one waits for choose_trial_to_run.
        if trial.status == Trial.PENDING:
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller: "TuneController", trial: Trial, result: dict) -> str:
        step = int(result[self.time_attr])
        if step >= self.max_t:
            return TrialScheduler.STOP
        trials = tune_controller.get_trials()
        rung = self._waiting_rung(step, trials)
        if rung is None:
            return TrialScheduler.CONTINUE
        if not self._all_reached(rung, trials, current=(trial, result)):
            return TrialScheduler.PAUSE
        continuing = self._judge(tune_controller, rung, trials, current=(trial, result))
        if not continuing:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE if self._waiting_rung(step, trials) is None else TrialScheduler.PAUSE

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._judge_complete_rungs(tune_controller)

    def on_trial_complete(self, tune_controller: "TuneController", trial: Trial, result: dict) -> None:
        self._judge_complete_rungs(tune_controller)

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._judge_complete_rungs(tune_controller)

    def choose_trial_to_run(self, tune_controller: "TuneController") -> Trial | None:
        """A paused trial that may train on (admitted first time, or promoted), while fewer than max_concurrent train."""
        trials = tune_controller.get_trials()
        if sum(t.status in (Trial.PENDING, Trial.RUNNING) for t in trials) >= self.max_concurrent:
            return None
        for trial in trials:
            if trial.status != Trial.PAUSED or self._waiting_rung(self._step(trial), trials) is not None:
                continue
            if self._step(trial) in self.rungs and trial.trial_id not in self._kept(self._step(trial), trials):
                tune_controller.stop_trial(trial)  # judged out before the search was restored
                continue
            return trial
        return None

    def debug_string(self) -> str:
        return f"Synchronous successive halving: rungs {self.rungs}, keeping 1/{self.reduction_factor} at each; judged {sorted(self.judged)}"

    # --- judging a rung -----------------------------------------------------------------------------

    def _all_reached(self, rung: int, trials: list[Trial], current: tuple[Trial, dict] | None = None) -> bool:
        """Every trial there will be exists, and every live one has reported at or past the rung."""
        if len(trials) < self.num_trials:
            return False
        return all(self._step(t, current) >= rung for t in trials if t.status in LIVE)

    def _judge_complete_rungs(self, tune_controller: "TuneController") -> None:
        """After a trial left: a rung that only it had still to reach is judged now."""
        if self._judging:
            return
        trials = tune_controller.get_trials()
        for rung in self.rungs:
            if not self._is_judged(rung, trials) and self._all_reached(rung, trials):
                self._judge(tune_controller, rung, trials)

    def _judge(self, tune_controller: "TuneController", rung: int, trials: list[Trial], current: tuple[Trial, dict] | None = None) -> bool:
        """Keep the best survivors(n) of the trials at `rung`, stop the others; whether `current` goes on."""
        kept = self._kept(rung, trials, current)
        self.judged.add(rung)
        current_trial = current[0] if current is not None else None
        self._judging = True
        try:
            for t in trials:
                if t.status in LIVE and t is not current_trial and t.trial_id not in kept:
                    tune_controller.stop_trial(t)
        finally:
            self._judging = False
        return current_trial is None or current_trial.trial_id in kept
