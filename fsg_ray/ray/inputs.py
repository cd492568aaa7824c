"""Inputs named on the driver's disk, carried to workers on any node through Ray's object store.

On a cluster the nodes do not share the driver's disk: a `--source` file or a `--target` folder typed
on the driver means nothing to a worker elsewhere. `ship` reads each such input once on the driver
(ten images, a source checkpoint: megabytes to a few hundred) and puts it in the object store;
`ShippedInputs.locate`, called where the work runs, returns a path on that node holding the same
bytes, written once per node under the system temp dir and named by their hash. Names every node
resolves by itself pass through unchanged: `s3://` URIs, and `toy:` names (procedural domains, and
the toy source shipped inside the package that every worker imports).

Adapt workers, tune trials and synthesis actors use it the same way:

    inputs = ship([spec.source, spec.target])      # on the driver, before Ray starts the work
    path = inputs.locate(spec.source)              # in the worker, trial or actor, on its node
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ray

from fsg_ray import storage
from fsg_ray.adapt.targets import CLOSED_PREFIX

# Beyond this an input belongs in object storage: every node would otherwise pull it from the driver.
MAX_SHIPPED_BYTES = 2 * 1024**3
CACHE_DIR = "fsg-ray-inputs"


class InputTooLarge(storage.StorageError):
    """A local input too large to carry through Ray; the message says to pass an s3:// URI instead."""


@dataclass(frozen=True)
class Shipped:
    """One packed input: a file's bytes, or an uncompressed tar of a folder."""

    ref: ray.ObjectRef
    digest: str
    base_name: str
    is_folder: bool


@dataclass(frozen=True)
class ShippedInputs:
    files: Mapping[str, Shipped] = field(default_factory=dict)

    def locate(self, name: str | None) -> str | None:
        """Where `name` is readable on this node: a local copy of a shipped input, else `name` itself."""
        if name is None or name not in self.files:
            return name
        return materialize(self.files[name])


def is_shippable(name: str | None) -> bool:
    """A path on this machine's disk, as opposed to a built-in `toy:` name, a `closed:` target (its source
    is shipped by name, `adapt.targets.input_uris`) or an object-store URI."""
    return name is not None and not name.startswith(("toy:", CLOSED_PREFIX)) and not storage.is_remote(name)


def ship(names: Iterable[str | None]) -> ShippedInputs:
    """Put every local file or folder among `names` into Ray's object store (needs a connected Ray).

    Raises ObjectNotFound for a path that does not exist and InputTooLarge above MAX_SHIPPED_BYTES.
    """
    return ShippedInputs({name: _pack(name) for name in dict.fromkeys(names) if is_shippable(name)})


def _pack(name: str) -> Shipped:
    _, local = storage.resolve(name)
    path = Path(local)
    if not path.exists():
        raise storage.ObjectNotFound(f"{name}: no such file or folder on the driver")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    if size > MAX_SHIPPED_BYTES:
        raise InputTooLarge(
            f"{name}: {size / 1024**3:.1f} GiB is too much to carry from the driver to every node "
            f"(limit {MAX_SHIPPED_BYTES / 1024**3:.0f} GiB); upload it and pass its s3:// URI instead"
        )
    data = _tar(path, files) if path.is_dir() else path.read_bytes()
    return Shipped(ray.put(data), hashlib.sha256(data).hexdigest(), path.name, path.is_dir())


def _tar(folder: Path, files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for file in files:
            archive.add(file, arcname=str(file.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def materialize(item: Shipped) -> str:
    """The shipped input as a file or folder on this node; the first worker here writes it, the rest reuse it."""
    root = Path(tempfile.gettempdir()) / CACHE_DIR
    final = root / item.digest
    if not final.exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{item.digest[:16]}."))
        data = ray.get(item.ref)
        if item.is_folder:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                archive.extractall(staging / item.base_name, filter="data")
        else:
            (staging / item.base_name).write_bytes(data)
        try:
            os.rename(staging, final)
        except OSError:  # another worker on this node got there first, with the same bytes
            shutil.rmtree(staging)
    return str(final / item.base_name)
