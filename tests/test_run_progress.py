"""What a run shows while it trains: one update per step to the progress it is given, closed at the end; on Ray
with no terminal, log lines instead of a bar."""

import logging
from pathlib import Path

import pytest
from tiny import write_tiny_source

from fsg_ray.adapt.loop import StepStats
from fsg_ray.adapt.run import DirectorySink, RunSpec, run_adaptation
from fsg_ray.config import load_config
from fsg_ray.ray.train import LoggedProgress


def test_the_progress_gets_every_step_from_where_the_run_starts_and_is_closed(tmp_path: Path):
    seen = []

    class Recorder:
        def __init__(self, total: int, initial: int):
            seen.append(("open", total, initial))

        def update(self, stats) -> None:
            seen.append(stats.step)

        def close(self) -> None:
            seen.append("close")

    source = write_tiny_source(tmp_path / "source.pt")
    spec = RunSpec(source, "toy:sketch", load_config(None, ["steps=3", "cdc.batch=2"]))
    run_adaptation(spec, DirectorySink(str(tmp_path / "run")), bar=Recorder)
    assert seen == [("open", 3, 0), 0, 1, 2, "close"]


def test_no_progress_is_opened_when_progress_is_off(tmp_path: Path):
    opened = []
    source = write_tiny_source(tmp_path / "source.pt")
    spec = RunSpec(source, "toy:sketch", load_config(None, ["steps=1", "cdc.batch=2"]))
    run_adaptation(spec, DirectorySink(str(tmp_path / "run")), progress=False, bar=lambda total, initial: opened.append(total))
    assert opened == []


def _stats(step: int) -> StepStats:
    return StepStats(step=step, d_loss=1.5, g_loss=0.5, cdc_loss=0.0, r1=None, path_length=None, anchor=False)


def test_a_driver_without_a_terminal_gets_a_log_line_every_tenth_of_the_run_and_at_the_end(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="fsg_ray.ray.train")
    progress = LoggedProgress(total=25, initial=0)
    for step in range(25):
        progress.update(_stats(step))
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" steps")[0] for line in lines] == [f"adapt {n}/25" for n in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)]
    assert "ETA 0:00:00, d=1.5 g=0.5" in lines[-1]


def test_a_resumed_run_counts_its_lines_from_where_it_resumed(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="fsg_ray.ray.train")
    progress = LoggedProgress(total=100, initial=90)
    for step in range(90, 100):
        progress.update(_stats(step))
    assert [r.getMessage().split(" steps")[0] for r in caplog.records] == [f"adapt {n}/100" for n in range(91, 101)]
