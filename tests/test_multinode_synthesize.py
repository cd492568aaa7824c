"""`fsg synthesize --workers 2` on the two-node loopback cluster (tests/loopback.py) survives losing the second node.

One generator actor runs on each node; the second node's processes are killed (by pid) while the
job renders, and a node joins again. The dataset must come out exactly as an undisturbed run's.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import LoopbackCluster, fsg, node_env, node_id_of, two_nodes, wait_for
from ray.util.state import list_actors

from fsg_ray import storage
from fsg_ray.ray.synthesize import synthesize
from fsg_ray.synth.manifest import MANIFEST_FILE
from fsg_ray.synth.options import DatasetOptions, Scaling

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

# Long enough that shards are still to come when the node dies: the shipped 64 px toy model, 4 seeds a shard.
COUNT, SHARD_ROWS = 160, 4
OPTIONS = DatasetOptions(generator="toy:faces", count=COUNT, shard_rows=SHARD_ROWS, noise="seeded")


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[LoopbackCluster]:
    """Room for two generator actors (one CPU each) and the encode stage: the head holds one actor and the encoding."""
    with two_nodes(node_env(), head_cpus=2, second_cpus=1) as cluster:
        yield cluster


def renderer_nodes(address: str) -> dict[str, str]:
    """actor id -> node id of every generator actor alive now (other people's clusters run on the machine: name ours)."""
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id: a.node_id for a in actors if "ShardRenderer" in a.class_name}


def dataset_files(out: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(out, name)) for name in storage.list_dir(out)}


def test_synthesize_on_two_nodes_finishes_byte_identical_after_the_second_node_is_killed(cluster: LoopbackCluster, s3_bucket: str, tmp_path: Path):
    out, reference = f"s3://{s3_bucket}/killed", f"s3://{s3_bucket}/reference"
    head_id, second_id = node_id_of(cluster.root / "head"), node_id_of(cluster.root / "second")
    log = tmp_path / "synthesize.log"
    driver = fsg(
        "synthesize", "--generator", "toy:faces", "--count", str(COUNT), "--shard-rows", str(SHARD_ROWS), "--noise", "seeded",
        "--workers", "2", "--out", out, "--quiet", env={**cluster.env, "RAY_ADDRESS": cluster.address}, log=log,
    )
    try:
        placed = wait_for(lambda: (nodes := renderer_nodes(cluster.address)) and len(nodes) == 2 and set(nodes.values()), "two generator actors", timeout=180)
        assert placed == {head_id, second_id}, "one generator actor per node"
        wait_for(lambda: any(n.endswith(".parquet") for n in storage.list_dir(out)) or driver.poll() is not None, "the first shard", timeout=180)
        cluster.nodes[1].kill()
        assert not storage.exists(storage.join(out, MANIFEST_FILE)), "the job finished before the node died: nothing was interrupted"
        shards_at_kill = sum(n.endswith(".parquet") for n in storage.list_dir(out))
        cluster.add_node("second-again")
        assert driver.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    print(f"{shards_at_kill} of {COUNT // SHARD_ROWS} shards were written when the node died", file=sys.stderr)

    node_id_of(cluster.root / "second-again")  # the reference run, too, has one actor per node
    synthesize(OPTIONS, reference, Scaling(workers=2), progress=False)
    assert dataset_files(out) == dataset_files(reference)
