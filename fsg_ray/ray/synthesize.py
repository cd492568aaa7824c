"""`fsg synthesize`: a Ray Data job that renders seed ranges into Parquet shards, resumable and deterministic.

One dataset row is one shard's seed range, so a shard never splits across blocks: a pool of generator
actors (a GPU each when asked) renders a range, a CPU task encodes its images and writes the shard
itself under its seed-range name (Ray's `write_parquet` picks other names on every run, which a
resume could not recognise). Ranges whose shard is already present and complete are skipped; the
manifest goes last. The images of a seed do not depend on workers, batch or resumes (see
fsg_ray/synth/render.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import ray.data
from tqdm import tqdm

from fsg_ray import storage
from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.ray.cluster import connect
from fsg_ray.synth.manifest import JobRecord, claim, write_manifest
from fsg_ray.synth.options import DatasetOptions, Scaling, SynthError
from fsg_ray.synth.render import RangeRenderer, RenderedRange, noise_shapes
from fsg_ray.synth.shards import ShardLayout, ShardRecord, encode_table, inspect_shard, plan_shards, shard_name, write_shard

RENDER_CPUS = 1.0
ENCODE_CPUS = 1.0
INSPECT_CPUS = 0.25


@dataclass(frozen=True)
class Summary:
    """What a run left at the URI and what it cost."""

    out: str
    images: int
    shards: int
    bytes: int
    written_shards: int  # by this run; the rest were present and complete already
    wall_s: float
    render_s: float  # summed over workers
    encode_s: float  # summed over encode tasks (encoding + Parquet + upload)

    def describe(self) -> str:
        kept = self.shards - self.written_shards
        return (
            f"{self.images} images in {self.shards} shards ({self.bytes / 2**20:.1f} MiB) at {self.out}; "
            f"{self.written_shards} shards written by this run, {kept} already complete; {self.wall_s:.1f} s "
            f"(render {self.render_s:.1f} s, encode and write {self.encode_s:.1f} s, summed over workers and tasks)"
        )


def _normalized(options: DatasetOptions) -> DatasetOptions:
    """Local paths made absolute: workers run elsewhere, and a rerun from another directory is the same job."""

    def absolute(uri: str | None) -> str | None:
        return uri if uri is None or uri.startswith("toy:") else storage.absolute(uri)

    return replace(options, generator=absolute(options.generator), pair_with=absolute(options.pair_with))


def _layout(options: DatasetOptions) -> ShardLayout:
    """Check the generator (and source) load and fit together, before anything is written."""
    g, _ = load_sampler(options.generator)
    if options.pair_with:
        source, _ = load_sampler(options.pair_with)
        if source.style_dim != g.style_dim:
            raise SynthError(f"pair_with: {options.pair_with} takes z of {source.style_dim} values, {options.generator} of {g.style_dim}")
        if options.noise == "seeded" and noise_shapes(source) != noise_shapes(g):
            raise SynthError(f"pair_with: seeded noise needs the same noise maps, but {options.pair_with} is {source.config.size}px and {options.generator} {g.config.size}px")
    return ShardLayout(
        image_format=options.format,
        size=options.size,
        paired=options.pair_with is not None,
        z_dim=g.style_dim if options.with_latents else None,
        truncation=options.truncation,
        model=options.generator,
    )


class ShardRenderer:
    """A Ray Data actor: loads the generator once, renders one shard's seed range per call."""

    def __init__(self, options: DatasetOptions, scaling: Scaling):
        import torch

        device = torch.device("cuda" if scaling.gpus_per_worker > 0 else "cpu")
        # Transposed convs (the upsampling) may pick atomics-based cuDNN algorithms whose sums vary run to run.
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        g, _ = load_sampler(options.generator, device)
        source = load_sampler(options.pair_with, device)[0] if options.pair_with else None
        self.renderer = RangeRenderer(g, source, options.truncation, options.noise, scaling.batch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        started = time.perf_counter()
        rendered = self.renderer.render(int(batch["start"][0]), int(batch["end"][0]))
        out = {"start": batch["start"], "end": batch["end"], "images": rendered.images[None], "z": rendered.z[None]}
        if rendered.source_images is not None:
            out["source_images"] = rendered.source_images[None]
        return {**out, "render_s": np.array([time.perf_counter() - started])}


def _encode_and_write(batch: dict[str, np.ndarray], out: str, layout: ShardLayout) -> dict[str, Any]:
    """A CPU task: encode one rendered range and write its shard."""
    started = time.perf_counter()
    start, end = int(batch["start"][0]), int(batch["end"][0])
    source = batch["source_images"][0] if "source_images" in batch else None
    rendered = RenderedRange(start=start, end=end, images=batch["images"][0], source_images=source, z=batch["z"][0])
    record = write_shard(out, encode_table(rendered, layout), start, end)
    return {
        "file": [record.file], "start": [start], "end": [end], "rows": [record.rows], "bytes": [record.bytes],
        "sha256": [record.sha256], "render_s": batch["render_s"], "encode_s": [time.perf_counter() - started],
    }  # fmt: skip


def _complete_shards(out: str, ranges: list[tuple[int, int]]) -> list[ShardRecord]:
    """Records of the planned shards already present and complete (read and hashed in parallel)."""
    present = set(storage.list_dir(out))
    candidates = [(start, end) for start, end in ranges if shard_name(start, end) in present]
    inspect = ray.remote(num_cpus=INSPECT_CPUS)(inspect_shard)
    found = ray.get([inspect.remote(out, start, end) for start, end in candidates])
    return [record for record in found if record is not None]


def _check_cluster_fits(scaling: Scaling) -> None:
    """Generator actors holding every CPU would leave none to encode, and the job would wait forever."""
    resources = ray.cluster_resources()
    needed = {"CPU": scaling.workers * RENDER_CPUS + ENCODE_CPUS, "GPU": scaling.workers * scaling.gpus_per_worker}
    for name, amount in needed.items():
        if amount > resources.get(name, 0.0):
            raise SynthError(
                f"workers: {scaling.workers} generator actors need {amount:g} {name} with the encode stage, "
                f"the cluster has {resources.get(name, 0.0):g}"
            )


def synthesize(options: DatasetOptions, out: str, scaling: Scaling = Scaling(), progress: bool = True) -> Summary:
    """Render options.count images into shards at `out`; a rerun finishes an interrupted job."""
    started = time.perf_counter()
    options, out = _normalized(options), storage.absolute(out)
    storage.exists(out)  # a missing bucket raises here, before any work
    layout = _layout(options)
    record = JobRecord.describe(options, scaling)
    connect(min_cpus=scaling.workers * RENDER_CPUS + ENCODE_CPUS)
    _check_cluster_fits(scaling)
    manifest = claim(out, record)
    if manifest is not None:
        return Summary(out, manifest["images"], len(manifest["shards"]), manifest["bytes"], 0, time.perf_counter() - started, 0.0, 0.0)

    ranges = plan_shards(options.seed_start, options.count, options.shard_rows)
    done = _complete_shards(out, ranges)
    done_starts = {shard.start for shard in done}
    pending = [(start, end) for start, end in ranges if start not in done_starts]

    written, render_s, encode_s = [], 0.0, 0.0
    with tqdm(total=options.count, initial=sum(shard.rows for shard in done), unit="img", disable=not progress, desc="synthesize") as bar:
        if pending:
            try:
                for row in _pipeline(pending, options, out, scaling, layout).iter_rows():
                    written.append(ShardRecord(**{key: row[key] for key in ("file", "start", "end", "rows", "bytes", "sha256")}))
                    render_s, encode_s = render_s + row["render_s"], encode_s + row["encode_s"]
                    bar.update(row["rows"])
            except Exception as exc:
                raise _storage_error_in(exc) or exc
    missing = sorted(set(ranges) - {(shard.start, shard.end) for shard in done + written})
    if missing:  # never expected: a manifest must not call a dataset with holes complete
        raise RuntimeError(f"{out}: the job ended without shards for seed ranges {missing[:5]}; rerun to write them")
    manifest = write_manifest(out, record, scaling, done + written)
    return Summary(out, manifest["images"], len(manifest["shards"]), manifest["bytes"], len(written), time.perf_counter() - started, render_s, encode_s)


def _storage_error_in(exc: BaseException) -> storage.StorageError | None:
    """The storage error (an outage past its retry window: URI and last error) inside the wrappers Ray Data
    and Ray put around a task's exception, so that the job fails with its one line rather than a worker's traceback."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, storage.StorageError) and not isinstance(current, ray.exceptions.RayError):
            return current
        seen.add(id(current))
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _pipeline(pending: list[tuple[int, int]], options: DatasetOptions, out: str, scaling: Scaling, layout: ShardLayout) -> ray.data.Dataset:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts images; Ray's would count shards
    # Keep a task's own exception (not Ray Data's UserCodeException, which carries it only as text), so that
    # a storage outage past its window reaches the driver as the StorageOutage naming the URI and last error.
    context.raise_original_map_exception = True
    ranges = ray.data.from_items([{"start": start, "end": end} for start, end in pending], override_num_blocks=len(pending))
    rendered = ranges.map_batches(
        ShardRenderer,
        fn_constructor_kwargs={"options": options, "scaling": scaling},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=scaling.workers),
        num_cpus=RENDER_CPUS,
        num_gpus=scaling.gpus_per_worker,
    )
    return rendered.map_batches(_encode_and_write, fn_kwargs={"out": out, "layout": layout}, batch_size=1, num_cpus=ENCODE_CPUS)
