"""A real two-node Ray cluster on one machine (tests/loopback.py): `fsg adapt --workers 2` across nodes survives losing a node.

The session's moto server lets anyone in, so the missing-credential case runs against a second moto
server that checks credentials the way S3 does (IAM users and keys created in it); the nodes hold
that server's valid keys, which the session's server accepts as it accepts any.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import psutil
import pytest
import ray
import ray.cloudpickle
import torch
from loopback import LOOPBACK, LoopbackCluster, alive_nodes, free_port, fsg, listening, node_env, node_id_of, s3_keys, two_nodes, wait_for
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tiny import TINY, write_target_folder, write_tiny_source

import fsg_ray
from fsg_ray.adapt.run import RunSpec
from fsg_ray.config import load_config
from fsg_ray.data.images import load_target
from fsg_ray.nets.checkpoints import read_checkpoint
from fsg_ray.ray.inputs import InputTooLarge, ship
from fsg_ray.ray.train import pin_local_inputs
from fsg_ray.storage import ObjectNotFound

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

NO_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
AUTH_BUCKET = "fsg-auth"


@pytest.fixture(scope="module")
def checking_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """(endpoint, credentials) of a moto server that refuses requests without valid credentials."""
    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    # The first four requests set up a user, its key, its policy and the bucket; every later one is checked.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    with open(tmp_path_factory.mktemp("moto-auth") / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Wait on the socket, not with a request: requests are counted.
        wait_for(lambda: listening(port) or server.poll() is not None, "the checking moto server", timeout=30)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="fsg")
        key = iam.create_access_key(UserName="fsg")["AccessKey"]
        allow_s3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="fsg", PolicyName="s3", PolicyDocument=json.dumps(allow_s3))
        credentials = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{k.lower(): v for k, v in credentials.items()}).create_bucket(Bucket=AUTH_BUCKET)
        yield endpoint, credentials
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, checking_s3: tuple[str, dict[str, str]]) -> Iterator[LoopbackCluster]:
    """Head and a second node, both with the S3 endpoint and credentials in their environment."""
    with two_nodes(node_env(**checking_s3[1])) as cluster:
        yield cluster


# Long enough that the run is still going when the second node dies: an idle CPU runs a tiny step in 0.1 s.
STEPS = 120
REPORT_POLL_S = 5


def test_adapt_on_two_nodes_finishes_from_its_last_checkpoint_after_the_second_node_is_killed(cluster, s3_endpoint, s3_bucket, tmp_path):
    source, target = write_tiny_source(tmp_path / "source.pt"), write_target_folder(tmp_path / "target")
    run_uri = f"s3://{s3_bucket}/runs/two-nodes"
    log = tmp_path / "adapt.log"
    head_id, second_id = node_id_of(cluster.root / "head"), node_id_of(cluster.root / "second")
    driver = fsg(
        "adapt", "--source", source, "--target", target, "--out", run_uri, "--workers", "2", "--max-failures", "3",
        "--method", "tgan", "--steps", str(STEPS), "--set", "checkpoint_every=5", "--set", "sample_every=1000", "--quiet",
        # Every rank's placement line must reach the log: no merging of similar lines across workers.
        env={**cluster.env, "RAY_ADDRESS": cluster.address, "RAY_DEDUP_LOGS": "0"}, log=log,
    )
    try:
        # Two checkpoints written: the first of them is committed by Ray, so a restart has one to resume from.
        wait_for(lambda: "runs/two-nodes/checkpoint_000010/state.pt" in s3_keys(s3_endpoint, s3_bucket, "runs/"), "checkpoint 10 on S3", timeout=150)
        # Ray commits a reported checkpoint when its controller next polls (about every 2 s): on an idle
        # CPU both checkpoints can be on S3 before either is committed, and a restart would begin at 0.
        time.sleep(REPORT_POLL_S)
        second = cluster.nodes[1]
        killed = second.kill()
        assert killed and not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in killed)
        cluster.add_node("second-again")
        again_id = node_id_of(cluster.root / "second-again")
        assert driver.wait(timeout=200) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()

    placements = re.findall(r"rank (\d) of 2 on node ([0-9a-f]+)", output)
    first, last = dict(placements[:2]), dict(placements[-2:])
    assert set(first.values()) == {head_id, second_id}, output[-4000:]
    assert set(last.values()) == {head_id, again_id}, output[-4000:]
    resumed = re.search(r"resumed from checkpoint_(\d+) at step (\d+)", output)
    assert resumed and int(resumed[1]) == int(resumed[2]) >= 5, output[-4000:]
    final = read_checkpoint(f"{run_uri}/checkpoint_{STEPS:06d}/state.pt")
    assert final["step"] == STEPS and final["workers"] == 2
    generator = fsg_ray.load_generator(f"{run_uri}/generator.pt")
    assert all(torch.equal(v, final["g_ema"][k]) for k, v in generator.state_dict().items())


def read_on_node(inputs, source: str, target: str) -> tuple[str, str, float, torch.Tensor]:
    local_source, local_target = inputs.locate(source), inputs.locate(target)
    weights = sum(float(v.double().sum()) for v in read_checkpoint(local_source)["g_ema"].values())
    return local_source, local_target, weights, load_target(local_target, TINY.size)


def test_a_local_source_file_and_target_folder_reach_a_worker_on_another_node_through_ray(cluster, tmp_path):
    source, target = write_tiny_source(tmp_path / "source.pt"), write_target_folder(tmp_path / "target")
    expected = read_on_node(ship([]), source, target)
    inputs = ship([source, target, "toy:faces"])
    os.remove(source)
    shutil.rmtree(target)  # from here on only Ray's object store holds them

    # The driver's node holds the shipped bytes; a task on another node must fetch them through Ray.
    elsewhere = next(i for i in alive_nodes() if i != node_id_of(cluster.root / "head"))
    task = ray.remote(num_cpus=0)(read_on_node).options(scheduling_strategy=NodeAffinitySchedulingStrategy(elsewhere, soft=False))
    local_source, local_target, weights, images = ray.get(task.remote(inputs, source, target))

    assert sorted(inputs.files) == sorted([source, target])
    assert local_source != source and local_target != target
    assert weights == expected[2]
    assert torch.equal(images, expected[3])


def test_a_node_without_credentials_fails_the_run_with_one_error_naming_that_node(cluster, checking_s3, tmp_path):
    endpoint, _ = checking_s3
    bare = {k: v for k, v in cluster.env.items() if k not in NO_CREDENTIALS}
    bare["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance-metadata lookup: loopback only
    node = cluster.add_node("no-credentials", cpus=0, env=bare)
    try:
        bare_id = node_id_of(cluster.root / "no-credentials")
        log = tmp_path / "adapt.log"
        driver = fsg(
            "adapt", "--source", "toy:faces", "--target", "toy:sketch", "--out", f"s3://{AUTH_BUCKET}/runs/refused", "--workers", "2", "--steps", "2",
            env={**cluster.env, "RAY_ADDRESS": cluster.address, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint}, log=log,
        )
        assert driver.wait(timeout=120) == 2
    finally:
        node.kill()
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("fsg adapt: error:")]
    assert len(errors) == 1 and bare_id[:12] in errors[0], output[-3000:]
    assert "has none of AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY set" in errors[0]
    assert "Traceback" not in output and output.count("cannot use s3://") == 1
    assert not s3_keys(endpoint, AUTH_BUCKET, "runs/", checking_s3[1]), "nothing may be written before the check"


def test_a_local_input_too_large_to_ship_is_refused_with_the_advice_to_pass_an_s3_uri(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr("fsg_ray.ray.inputs.MAX_SHIPPED_BYTES", 1000)
    target = write_target_folder(tmp_path / "target")
    with pytest.raises(InputTooLarge, match=rf"{re.escape(target)}: .* GiB is too much .* pass its s3:// URI instead"):
        ship([target])
    with pytest.raises(ObjectNotFound, match="no such file or folder on the driver"):
        ship([str(tmp_path / "missing")])


def test_a_local_run_folder_as_source_travels_as_its_latest_checkpoint_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for step in (2, 4):
        (tmp_path / "run" / f"checkpoint_{step:06d}").mkdir(parents=True)
        write_tiny_source(tmp_path / "run" / f"checkpoint_{step:06d}" / "state.pt")
    spec = RunSpec(source="run", target="shots", config=load_config(None, []), resume_from="toy:faces")

    pinned = pin_local_inputs(spec)

    assert pinned.source == str(tmp_path / "run" / "checkpoint_000004" / "state.pt")
    assert pinned.target == str(tmp_path / "shots") and pinned.resume_from == "toy:faces"
