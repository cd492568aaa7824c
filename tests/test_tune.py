"""`fsg tune` on a real local Ray cluster (dashboard on, as Tune + Train need) with S3 on the moto server."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray
import torch
from ray import tune
import yaml
from tiny import write_target_folder, write_tiny_source

import fsg_ray
from fsg_ray import storage
from fsg_ray.cli import main
from fsg_ray.config import load_config
from fsg_ray.nets.checkpoints import read_checkpoint
from fsg_ray.ray.cluster import start_local
from fsg_ray.ray.tune import experiment_path, run_search
from fsg_ray.search.config import load_search_config
from fsg_ray.search.report import read_results, rerender

# A cap against hangs; on a 2-core box shared with other work the S3 search alone has taken over 4 minutes.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[str]:
    """One local cluster for the module, started after the AWS variables point at the loopback S3; yields its address."""
    start_local(4, object_store_memory=10**9)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_search(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- a toy search on S3 where ASHA stops the trial that does not learn --------------------------------

LEARNING_RATES = [0.002, 0.0, 0.001]  # grid order = trial order; lr 0 leaves G the face source


@pytest.fixture(scope="module")
def s3_search(cluster, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """Three trials one after another on the shipped toy source -> toy:sketch, 20 steps, KID every 10."""
    bucket = "tune-search"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    config = write_search(tmp_path_factory.mktemp("s3search") / "search.yaml", {
        "name": "asha_on_s3",
        "base": {"source": "toy:faces", "target": "toy:sketch", "steps": 20, "sample_every": 10, "optim": {"ema_decay": 0.5}},
        "metric": {"name": "kid", "mode": "min"},
        "search": {"optim.lr": {"space": "grid_search", "values": LEARNING_RATES}},
        "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "trial": {"workers": 1, "max_failures": 0},
        "eval": {"every": 10, "n_generated": 64, "metrics": ["kid"], "features": "offline"},
    })
    search = load_search_config(config)
    run_uri = f"s3://{bucket}/tune/toy"
    summary = run_search(search, run_uri)
    frame, meta = read_results(run_uri)
    return search, run_uri, summary, frame, meta


def trial_of(frame, lr: float) -> str:
    return frame.loc[frame["optim.lr"] == lr, "trial_id"].iloc[0]


def test_asha_stops_the_trial_that_does_not_learn_and_the_next_trial_still_starts(s3_search):
    _, _, summary, frame, meta = s3_search
    last = frame.groupby("trial_id").tail(1).set_index("trial_id")
    stopped = trial_of(frame, 0.0)
    assert meta.metric == "kid_offline"
    assert last.loc[stopped, "status"] == "stopped_early" and last.loc[stopped, "step"] == 10
    assert last.loc[trial_of(frame, 0.002), "status"] == "completed"
    # The trial after the stopped one got the freed resources and reported.
    assert last.loc[trial_of(frame, 0.001), "step"] >= 10
    assert summary.trials == 3 and summary.statuses["stopped_early"] >= 1


def test_results_have_a_row_per_trial_and_report(s3_search):
    _, run_uri, _, frame, _ = s3_search
    first = trial_of(frame, 0.002)
    rows = frame[frame["trial_id"] == first]
    assert list(rows["step"]) == [10, 20]
    assert rows["kid_offline"].notna().all() and (rows["extractor_features"].str.startswith("offline:")).all()
    assert list(rows["checkpoint"]) == [f"{run_uri}/trials/{first}/checkpoint_{s:06d}/state.pt" for s in (10, 20)]


def test_results_best_yaml_and_best_generator_are_on_s3_and_load_back(s3_search, s3_endpoint, tmp_path):
    search, run_uri, summary, frame, _ = s3_search
    listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(Bucket="tune-search", Prefix="tune/toy/")
    keys = {item["Key"].removeprefix("tune/toy/") for item in listed["Contents"]}
    assert {"results.parquet", "best.yaml", "best/generator.pt", "search.png", "report.html", "search.yaml"} <= keys

    best_rows = frame[frame["trial_id"] == summary.best_trial]
    final = read_checkpoint(best_rows["checkpoint"].iloc[-1])
    g = fsg_ray.load_generator(f"{run_uri}/best/generator.pt")
    assert all(torch.equal(v, final["g_ema"][k]) for k, v in g.state_dict().items())

    (tmp_path / "best.yaml").write_bytes(storage.read_bytes(f"{run_uri}/best.yaml"))
    config = load_config(tmp_path / "best.yaml")
    assert config == search.trial_config({"optim.lr": summary.best_params["optim.lr"]})
    assert config.optim.lr == final["config"]["optim"]["lr"] != 0.0


def test_a_trial_directory_has_the_layout_of_fsg_adapt(s3_search, tmp_path):
    _, run_uri, _, frame, _ = s3_search
    trial = f"{run_uri}/trials/{trial_of(frame, 0.002)}"
    for name in ("checkpoint_000010/state.pt", "checkpoint_000020/state.pt", "samples/step_000020.png", "generator.pt"):
        assert storage.exists(f"{trial}/{name}"), name
    assert read_checkpoint(trial)["step"] == 20
    assert main(["sample", "--generator", trial, "--seeds", "0-3", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_the_report_renders_again_from_the_results(s3_search):
    _, run_uri, _, frame, _ = s3_search
    for name in ("search.png", "report.html"):
        storage.delete(f"{run_uri}/{name}")
    assert main(["tune", "--report", run_uri]) == 0
    page = storage.read_bytes(f"{run_uri}/report.html").decode()
    assert "data:image/png;base64," in page and "stopped_early" in page and "offline:" in page
    assert all(trial in page for trial in frame["trial_id"].unique())
    assert storage.read_bytes(f"{run_uri}/search.png").startswith(b"\x89PNG")


def test_rerunning_a_finished_search_on_s3_restores_it_and_reruns_nothing(s3_search, s3_endpoint):
    search, run_uri, summary, frame, _ = s3_search
    assert tune.Tuner.can_restore(*experiment_path(run_uri))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket="tune-search", Prefix="tune/toy/trials/")["Contents"]
    before = {item["Key"]: item["LastModified"] for item in listed}

    again = run_search(search, run_uri)

    listed = client.list_objects_v2(Bucket="tune-search", Prefix="tune/toy/trials/")["Contents"]
    assert {item["Key"]: item["LastModified"] for item in listed} == before
    assert (again.best_trial, again.statuses) == (summary.best_trial, summary.statuses)
    assert read_results(run_uri)[0].equals(frame)


# --- the driver dies mid-search; the same command resumes it -----------------------------------------


def wait_for(condition, what: str, driver: subprocess.Popen, log: Path, timeout: float = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited with {driver.returncode} while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot_says_finished(experiment: Path, trial_id: str) -> bool:
    """Whether Tune's latest experiment snapshot (written at most every 10 s) records the trial as finished."""
    for state in experiment.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(entry[0]) for entry in json.loads(state.read_text())["trial_data"]]
        except (ValueError, KeyError):  # caught mid-write
            return False
        if any(t["trial_id"] == trial_id and t["status"] == "TERMINATED" for t in trials):
            return True
    return False


def committed(trial: Path) -> list[str]:
    """The checkpoints Ray Train has committed for a trial (a rerun resumes from the newest of them)."""
    try:
        snapshot = json.loads((trial / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def reported_in_results(run: Path, other_than: str) -> bool:
    try:
        frame, _ = read_results(str(run))
    except (storage.StorageError, OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return False
    return bool((frame["trial_id"] != other_than).any())


def mtimes(folder: Path, names: list[str] | None = None) -> dict[str, int]:
    files = folder.glob("checkpoint_*/state.pt") if names is None else [folder / name / "state.pt" for name in names]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


def test_a_killed_driver_resumes_without_redoing_finished_trials(cluster, tmp_path):
    """Two trials of 2 workers each, one after the other, on a tiny model: the driver (a subprocess on the
    module's cluster through RAY_ADDRESS) is killed while the second trial runs; the rerun finishes it."""
    source, target = write_tiny_source(tmp_path / "source.pt"), write_target_folder(tmp_path / "target")
    validation = write_target_folder(tmp_path / "validation", n=16)
    config = write_search(tmp_path / "search.yaml", {
        "name": "resume",
        "base": {"source": source, "target": target, "method": "tgan", "sample_every": 10},
        "metric": {"name": "kid", "mode": "min"},
        "search": {"steps": {"space": "grid_search", "values": [20, 100]}},
        "scheduler": {"type": "none"},
        "max_concurrent_trials": 1,
        "trial": {"workers": 2, "max_failures": 0},
        "eval": {"every": 10, "n_generated": 16, "validation": validation, "metrics": ["kid"], "features": "offline"},
    })
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": cluster, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log_path = tmp_path / "driver.log"
    log = open(log_path, "w")
    driver = subprocess.Popen([sys.executable, "-m", "fsg_ray.cli", "tune", str(config), "--out", str(run)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        trials = run / "trials"
        wait_for(lambda: len(list(trials.glob("*/generator.pt"))) == 1, "the first trial to finish", driver, log_path)
        finished = next(trials.glob("*/generator.pt")).parent
        wait_for(lambda: snapshot_says_finished(run / "tune", finished.name), "Tune's snapshot of the first trial as finished", driver, log_path)
        second = lambda: any(committed(p) for p in trials.iterdir() if p != finished)  # noqa: E731
        wait_for(second, "the second trial's first committed checkpoint", driver, log_path)
        wait_for(lambda: reported_in_results(run, finished.name), "the second trial's first row in results.parquet", driver, log_path)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    unfinished = next(p for p in trials.iterdir() if p != finished)
    before = {"finished": mtimes(finished), "unfinished": mtimes(unfinished, committed(unfinished)), "generator": (finished / "generator.pt").stat().st_mtime_ns}
    assert not (unfinished / "generator.pt").exists()
    so_far, _ = read_results(str(run))  # written while the search ran, before the driver died
    first = so_far[so_far["trial_id"] == finished.name]
    assert list(first["step"]) == [10, 20] and set(first["status"]) == {"completed"}
    rerender(str(run))  # fsg tune --report draws the search as far as it got
    assert "<table" in (run / "report.html").read_text() and (run / "search.png").exists()

    summary = run_search(load_search_config(config), str(run))

    assert mtimes(finished) == before["finished"] and (finished / "generator.pt").stat().st_mtime_ns == before["generator"]
    assert before["unfinished"] and mtimes(unfinished, [k.split("/")[0] for k in before["unfinished"]]) == before["unfinished"]
    assert read_checkpoint(str(unfinished))["step"] == 100
    assert summary.statuses == {"completed": 2}
    # Tune restarted the unfinished trial without a Tune checkpoint and emptied its result log; the reports
    # from before the kill come back from the results file written while the first driver ran.
    resumed, _ = read_results(str(run))
    assert list(resumed.loc[resumed["trial_id"] == unfinished.name, "step"]) == list(range(10, 101, 10))


# --- synchronous successive halving: every trial reaches a rung before any is judged there -----------


def test_sha_judges_a_rung_only_when_every_trial_reached_it_and_resumes_the_survivors(cluster, tmp_path):
    """Four trials of a tiny model, one at a time; sha keeps the best half at steps 10 and 20 of 30."""
    source, target = write_tiny_source(tmp_path / "source.pt"), write_target_folder(tmp_path / "target")
    validation = write_target_folder(tmp_path / "validation", n=16)
    config = write_search(tmp_path / "search.yaml", {
        "name": "sha",
        "base": {"source": source, "target": target, "method": "tgan", "steps": 30, "sample_every": 30},
        "metric": {"name": "kid", "mode": "min"},
        "search": {"optim.lr": {"space": "grid_search", "values": [0.002, 0.0, 0.001, 0.0005]}},
        "scheduler": {"type": "sha", "grace_period": 10, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "trial": {"workers": 1, "max_failures": 0},
        "eval": {"every": 10, "n_generated": 16, "validation": validation, "metrics": ["kid"], "features": "offline"},
    })
    run = tmp_path / "run"

    summary = run_search(load_search_config(config), str(run))

    frame, meta = read_results(str(run))
    last = frame.groupby("trial_id")["step"].max()
    assert sorted(last) == [10, 10, 20, 30]
    assert summary.statuses == {"stopped_early": 3, "completed": 1}
    for rung, reached in ((10, last.index), (20, last[last >= 20].index)):
        at_rung = frame[(frame["step"] == rung) & frame["trial_id"].isin(reached)].set_index("trial_id")[meta.metric]
        assert set(last[last > rung].index) == set(at_rung.nsmallest(len(at_rung) // 2).index), f"rung {rung}"
    # Synchronous, and the survivors resumed their Train runs: with one trial at a time, a survivor that
    # trained again from step 0 would rewrite its step-10 checkpoint after another trial's step 20.
    written = {step: [(run / "trials" / t / f"checkpoint_{step:06d}" / "state.pt").stat().st_mtime_ns for t in last[last >= step].index] for step in (10, 20, 30)}
    assert max(written[10]) < min(written[20]) and max(written[20]) < min(written[30])
    assert (run / "trials" / summary.best_trial / "generator.pt").exists()

    # Tune's snapshot keeps the paused trials sha stopped as PAUSED; the same command again trains none of them.
    before = {t: mtimes(run / "trials" / t) for t in last.index}
    again = run_search(load_search_config(config), str(run))
    assert {t: mtimes(run / "trials" / t) for t in last.index} == before
    assert (again.best_trial, again.statuses) == (summary.best_trial, summary.statuses)
