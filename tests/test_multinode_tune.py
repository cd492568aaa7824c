"""`fsg tune` on the two-node loopback cluster (tests/loopback.py) survives losing the second node.

Two trials run at once, one Train worker on each node (a worker takes 1.5 of a node's 2 CPUs, so
no node holds two). The second node's processes are killed (by pid) once the trial there has a
committed checkpoint, and a node joins again. The search must finish with the results of an undisturbed
search of the same file: runs are seeded per step and resume exactly.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
import yaml
from loopback import LoopbackCluster, fsg, node_env, node_id_of, two_nodes, wait_for
from tiny import write_target_folder, write_tiny_source

from fsg_ray.ray.tune import run_search
from fsg_ray.search.config import load_search_config
from fsg_ray.search.report import read_results

# A cap against hangs: under heavy load on the shared 2-core box the two searches together took over 10 minutes.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]

STEPS, EVERY = 40, 5
LEARNING_RATES = [0.002, 0.001]
# What a report says about the machine's speed rather than the run: never equal between two searches.
TIMINGS = ["step_time_s", "images_per_s", "global_images_per_s", "eval_s", "time_total_s"]


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[LoopbackCluster]:
    with two_nodes(node_env(RAY_DEDUP_LOGS="0"), head_cpus=2, second_cpus=2) as cluster:
        yield cluster


def write_search(folder: Path) -> Path:
    source, target = write_tiny_source(folder / "source.pt"), write_target_folder(folder / "target")
    validation = write_target_folder(folder / "validation", n=16)
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump({
        "name": "node_loss",
        "base": {"source": source, "target": target, "method": "tgan", "steps": STEPS, "sample_every": 1000},
        "metric": {"name": "kid", "mode": "min"},
        "search": {"optim.lr": {"space": "grid_search", "values": LEARNING_RATES}},
        "scheduler": {"type": "none"},
        "max_concurrent_trials": 2,
        "trial": {"workers": 1, "cpus_per_worker": 1.5, "max_failures": 2},
        "eval": {"every": EVERY, "n_generated": 16, "validation": validation, "metrics": ["kid"], "features": "offline"},
    }))
    return path


def objects(bucket: str, prefix: str) -> dict[str, object]:
    """key -> LastModified of every object under the prefix."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["LastModified"] for page in pages for item in page.get("Contents", [])}


def committed(bucket: str, prefix: str) -> dict[str, list[str]]:
    """trial id -> the checkpoints Ray Train has committed for it (a restart resumes from the newest)."""
    s3, found = boto3.client("s3"), {}
    for key in objects(bucket, prefix):
        if key.endswith("/checkpoint_manager_snapshot.json"):
            snapshot = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            found[key.split("/")[-2]] = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
    return found


def trial_on(node_id: str, driver_log: str) -> str | None:
    """The trial whose Train worker runs on the node, from the workers' lines in the driver's log (RAY_DEDUP_LOGS=0)."""
    nodes = dict(re.findall(r"RayTrainWorker pid=(\d+)[^\n]*? rank \d+ of \d+ on node ([0-9a-f]+)", driver_log))
    trials = dict(re.findall(r"RayTrainWorker pid=(\d+)[^\n]*? Checkpoint successfully created at: [^\n]*/trials/([^/\s]+)/checkpoint_", driver_log))
    return next((trial for pid, trial in trials.items() if nodes.get(pid) == node_id), None)


def by_learning_rate(frame: pd.DataFrame) -> dict[float, pd.DataFrame]:
    """Each trial's rows without what names the search (trial id, checkpoint URI) or times it."""
    kept = frame.drop(columns=["trial_id", "checkpoint", *TIMINGS])
    return {lr: rows.reset_index(drop=True) for lr, rows in kept.groupby("optim.lr")}


def test_tune_on_two_nodes_finishes_like_an_undisturbed_search_after_the_second_node_is_killed(cluster: LoopbackCluster, s3_bucket: str, tmp_path: Path):
    search = write_search(tmp_path)
    run_uri, trials = f"s3://{s3_bucket}/tune/lost", "tune/lost/trials/"
    second_id = node_id_of(cluster.root / "second")
    log = tmp_path / "tune.log"
    driver = fsg("tune", str(search), "--out", run_uri, env={**cluster.env, "RAY_ADDRESS": cluster.address}, log=log)
    try:
        lost = lambda: (t := trial_on(second_id, log.read_text())) and committed(s3_bucket, trials).get(t) and t or driver.poll() is not None  # noqa: E731
        trial = wait_for(lost, "a committed checkpoint of the trial on the second node", timeout=600)
        assert driver.poll() is None, log.read_text()[-4000:]
        at_kill = committed(s3_bucket, trials)
        kept = {key: modified for key, modified in objects(s3_bucket, trials).items()
                if any(key.startswith(f"{trials}{t}/{name}/") for t, names in at_kill.items() for name in names)}  # fmt: skip
        cluster.nodes[1].kill()
        assert f"{trials}{trial}/generator.pt" not in objects(s3_bucket, trials), "the trial on the second node ended before the node died"
        cluster.add_node("second-again", cpus=2)
        assert driver.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()

    # The lost trial went on from a committed checkpoint: nothing committed before the loss was written again.
    resumed = [int(step) for name, step in re.findall(r"resumed from checkpoint_(\d+) at step (\d+)", output) if int(name) == int(step)]
    assert resumed and min(resumed) >= EVERY, output[-4000:]
    after = objects(s3_bucket, trials)
    assert {key: after.get(key) for key in kept} == kept

    lost, _ = read_results(run_uri)
    assert not lost.duplicated(["trial_id", "step"]).any()
    assert all(list(rows["step"]) == list(range(EVERY, STEPS + 1, EVERY)) for _, rows in lost.groupby("trial_id"))

    run_search(load_search_config(search), f"s3://{s3_bucket}/tune/undisturbed")
    undisturbed, _ = read_results(f"s3://{s3_bucket}/tune/undisturbed")
    expected, got = by_learning_rate(undisturbed), by_learning_rate(lost)
    assert expected.keys() == got.keys() == set(LEARNING_RATES)
    for lr in LEARNING_RATES:
        pd.testing.assert_frame_equal(got[lr], expected[lr], check_exact=True)
