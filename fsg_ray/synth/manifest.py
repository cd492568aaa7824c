"""The two records that make a dataset resumable and self-describing.

`_job.json`, written before the first shard, says how the dataset is made (generator and source with
the sha256 of their weights, fsg-ray version, render device, every option that decides the bytes); a
rerun compares itself with it and refuses on any difference, naming it. `_manifest.json`, written
after the last shard, adds the run's scaling and every shard with rows and sha256: its presence
means the dataset is complete. Both start with "_", so pyarrow.dataset and pandas skip them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fsg_ray import storage
from fsg_ray.nets.checkpoints import resolve_checkpoint_uri
from fsg_ray.synth.options import DatasetOptions, Scaling, SynthError
from fsg_ray.synth.shards import ShardRecord

JOB_FILE = "_job.json"
MANIFEST_FILE = "_manifest.json"
FORMAT = "fsg-ray-synthesize/1"


class DatasetMismatch(SynthError):
    """The URI holds a dataset made with another generator, options or version."""


def fsg_ray_version() -> str:
    try:
        return version("fsg-ray")
    except PackageNotFoundError:
        return "unknown"


def weights_identity(uri: str) -> dict[str, str]:
    """The URI as given and the sha256 of the checkpoint file it resolves to (a run dir: its latest checkpoint)."""
    return {"uri": uri, "sha256": hashlib.sha256(storage.read_bytes(resolve_checkpoint_uri(uri))).hexdigest()}


@dataclass(frozen=True)
class JobRecord:
    """How a dataset is made: equal records make equal bytes."""

    format: str
    fsg_ray_version: str
    device: str
    generator: dict[str, str]
    pair_with: dict[str, str] | None
    options: dict[str, Any]

    @classmethod
    def describe(cls, options: DatasetOptions, scaling: Scaling) -> JobRecord:
        return cls(
            format=FORMAT,
            fsg_ray_version=fsg_ray_version(),
            device=scaling.device,
            generator=weights_identity(options.generator),
            pair_with=weights_identity(options.pair_with) if options.pair_with else None,
            options=dataclasses.asdict(options),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def differences(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'options.truncation: 0.7 in the dataset, 1.0 asked' for every field that differs."""
    old, new = _flatten(existing), _flatten(wanted)
    return [f"{key}: {old.get(key)!r} in the dataset, {new.get(key)!r} asked" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except storage.ObjectNotFound:
        return None
    except json.JSONDecodeError as exc:
        raise DatasetMismatch(f"{uri}: not a JSON record ({exc})") from exc


def claim(out: str, record: JobRecord) -> dict[str, Any] | None:
    """Make `out` this job's dataset: refuse a dataset made differently, return its manifest when it is complete.

    A first run writes the job record before any shard; a rerun must match the one it finds.
    """
    wanted = record.to_json()
    existing = _read_json(storage.join(out, JOB_FILE))
    if existing is None:
        strays = [name for name in storage.list_dir(out) if name.endswith(".parquet")]
        if strays:
            raise DatasetMismatch(f"{out}: holds Parquet files ({', '.join(strays[:3])}) but no {JOB_FILE}: not a dataset of fsg synthesize; choose another --out")
        storage.write_bytes(storage.join(out, JOB_FILE), json.dumps(wanted, indent=2).encode())
        return None
    found = differences(existing, wanted)
    if found:
        raise DatasetMismatch(f"{out} was made differently; use another --out or the same settings:\n  " + "\n  ".join(found))
    return _read_json(storage.join(out, MANIFEST_FILE))


def write_manifest(out: str, record: JobRecord, scaling: Scaling, shards: list[ShardRecord]) -> dict[str, Any]:
    """The completion record, written after every shard."""
    ordered = sorted(shards, key=lambda shard: shard.start)
    manifest = {
        **record.to_json(),
        "scaling": dataclasses.asdict(scaling),
        "images": sum(shard.rows for shard in ordered),
        "bytes": sum(shard.bytes for shard in ordered),
        "shards": [dataclasses.asdict(shard) for shard in ordered],
    }
    storage.write_bytes(storage.join(out, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
    return manifest
