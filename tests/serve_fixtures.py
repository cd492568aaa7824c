"""Model roots for the Serve tests: several small runs on S3, written the way `fsg adapt` lays them out."""

from __future__ import annotations

import torch
from tiny import tiny_source

from fsg_ray import storage
from fsg_ray.nets.checkpoints import read_checkpoint, write_checkpoint

TINY_RUNS = ("m0", "m1", "m2", "m3", "m4")  # more than a test replica holds
TINY_STEP = 4


def write_tiny_run(run_uri: str, seed: int, source_uri: str) -> None:
    """A CDC-style run checkpoint of a randomly initialised tiny G (distinct per seed) that records its source."""
    ckpt = {**tiny_source(seed), "method": "cdc", "step": TINY_STEP, "source": source_uri, "target": "toy:sketch"}
    ckpt.pop("uri")
    write_checkpoint(storage.join(run_uri, f"checkpoint_{TINY_STEP:06d}", "state.pt"), ckpt)


def write_faces_run(run_uri: str) -> None:
    """The shipped toy-faces source as a run of its own, its G_ema nudged so that it differs from the source."""
    ckpt = read_checkpoint("toy:faces")
    ckpt.pop("uri")
    g_ema = {k: v.clone() for k, v in ckpt["g_ema"].items()}
    g_ema["to_rgb1.bias"] = g_ema["to_rgb1.bias"] + torch.tensor([0.25, -0.1, -0.3]).view_as(g_ema["to_rgb1.bias"])
    run = {**ckpt, "g_ema": g_ema, "method": "cdc", "step": 300, "source": "toy:faces", "target": "toy:painting"}
    write_checkpoint(storage.join(run_uri, "checkpoint_000300", "state.pt"), run)


def write_model_root(bucket_uri: str) -> dict[str, str]:
    """Under BUCKET/runs: m0..m4 (tiny), faces (64 px), exported (generator.pt only) and broken (corrupt).

    Returns the URIs of the root, the tiny runs' source and each run.
    """
    root, source = storage.join(bucket_uri, "runs"), storage.join(bucket_uri, "sources", "tiny.pt")
    write_checkpoint(source, {k: tiny_source(100)[k] for k in ("g", "g_ema", "d")})
    runs = {name: storage.join(root, name) for name in (*TINY_RUNS, "faces", "exported", "broken")}
    for seed, name in enumerate(TINY_RUNS):
        write_tiny_run(runs[name], seed, source)
    write_faces_run(runs["faces"])
    write_checkpoint(storage.join(runs["exported"], "generator.pt"), {k: tiny_source(7)[k] for k in ("g", "g_ema", "d")})
    storage.write_bytes(storage.join(runs["broken"], "checkpoint_000010", "state.pt"), b"PK\x03\x04 truncated upload")
    return {"root": root, "source": source, **runs}

