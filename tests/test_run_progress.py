"""What a run shows while it trains: one update per step to the progress it is given, closed at the end."""

from pathlib import Path

from tiny import write_tiny_source

from fsg_ray.adapt.run import DirectorySink, RunSpec, run_adaptation
from fsg_ray.config import load_config


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
