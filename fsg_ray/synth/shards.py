"""Images -> Parquet shards that pyarrow, pandas, Ray Data and Hugging Face `datasets` read.

A shard holds the seeds [start, end) and is named `part-{start:010d}-{end:010d}.parquet`, so its name
says which rows it holds and a rerun writes the same name with the same bytes. Images are the
`{bytes, path}` struct that `datasets.Image` stores, announced in the `huggingface` schema metadata
(without it `datasets` shows a plain struct). Row groups are sized by bytes so a streaming reader
holds about ROW_GROUP_BYTES at a time. Shard bytes depend only on the rows: no timestamps.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fsg_ray import storage
from fsg_ray.synth.render import RenderedRange

ROW_GROUP_BYTES = 32 * 2**20
SHARD_NAME = re.compile(r"^part-(\d{10})-(\d{10})\.parquet$")
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# PIL format name, file extension, and fixed encoder settings (part of the format: never per run).
ENCODERS = {
    "png": ("PNG", "png", {}),
    "webp": ("WEBP", "webp", {"quality": 90, "method": 4}),
    "jpeg": ("JPEG", "jpg", {"quality": 95, "subsampling": 0}),
}


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest lists for one shard."""

    file: str
    start: int
    end: int
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardLayout:
    """The columns every shard of one dataset has, and what goes in the constant ones."""

    image_format: str
    size: int | None
    paired: bool
    z_dim: int | None  # None: no z column
    truncation: float
    model: str

    def schema(self) -> pa.Schema:
        fields = [pa.field("seed", pa.int64()), pa.field("image", IMAGE_STRUCT)]
        if self.paired:
            fields.append(pa.field("source_image", IMAGE_STRUCT))
        if self.z_dim is not None:
            fields.append(pa.field("z", pa.list_(pa.float32(), self.z_dim)))
        fields += [pa.field("truncation", pa.float64()), pa.field("model", pa.string())]
        image_columns = ["image", "source_image"] if self.paired else ["image"]
        features = {name: {"_type": "Image"} for name in image_columns}
        return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def shard_name(start: int, end: int) -> str:
    return f"part-{start:010d}-{end:010d}.parquet"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    match = SHARD_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def plan_shards(seed_start: int, count: int, shard_rows: int) -> list[tuple[int, int]]:
    """Seed ranges [start, end) of every shard of the dataset."""
    end = seed_start + count
    return [(start, min(start + shard_rows, end)) for start in range(seed_start, end, shard_rows)]


def encode_image(pixels: np.ndarray, image_format: str, size: int | None) -> bytes:
    """One HWC uint8 image -> file bytes, resized (Lanczos) to size x size when asked."""
    pil_format, _, settings = ENCODERS[image_format]
    image = Image.fromarray(pixels)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **settings)
    return buffer.getvalue()


def _image_column(images: np.ndarray, seeds: range, layout: ShardLayout) -> pa.Array:
    extension = ENCODERS[layout.image_format][1]
    encoded = [encode_image(pixels, layout.image_format, layout.size) for pixels in images]
    paths = [f"{seed:010d}.{extension}" for seed in seeds]
    return pa.StructArray.from_arrays([pa.array(encoded, pa.binary()), pa.array(paths, pa.string())], fields=list(IMAGE_STRUCT))


def encode_table(rendered: RenderedRange, layout: ShardLayout) -> pa.Table:
    """The shard's rows: images encoded, constants repeated."""
    seeds = range(rendered.start, rendered.end)
    n = len(seeds)
    columns: dict[str, pa.Array] = {"seed": pa.array(seeds, pa.int64()), "image": _image_column(rendered.images, seeds, layout)}
    if layout.paired:
        if rendered.source_images is None:
            raise ValueError(f"seeds {rendered.start}-{rendered.end}: a paired layout needs source images")
        columns["source_image"] = _image_column(rendered.source_images, seeds, layout)
    if layout.z_dim is not None:
        columns["z"] = pa.FixedSizeListArray.from_arrays(pa.array(rendered.z.reshape(-1), pa.float32()), layout.z_dim)
    columns["truncation"] = pa.array([layout.truncation] * n, pa.float64())
    columns["model"] = pa.array([layout.model] * n, pa.string())
    return pa.table(columns, schema=layout.schema())


def parquet_bytes(table: pa.Table) -> bytes:
    """Uncompressed (images are compressed already), statistics on `seed` only, row groups of ~ROW_GROUP_BYTES."""
    mean_row = max(1, table.nbytes // max(1, table.num_rows))
    buffer = pa.BufferOutputStream()
    pq.write_table(
        table,
        buffer,
        row_group_size=max(1, ROW_GROUP_BYTES // mean_row),
        compression="none",
        use_dictionary=["model"],
        write_statistics=["seed"],
    )
    return buffer.getvalue().to_pybytes()


def write_shard(out: str, table: pa.Table, start: int, end: int) -> ShardRecord:
    """Write the shard whole (storage.write_bytes is atomic), return its manifest record."""
    data = parquet_bytes(table)
    name = shard_name(start, end)
    storage.write_bytes(storage.join(out, name), data)
    return ShardRecord(file=name, start=start, end=end, rows=table.num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def inspect_shard(out: str, start: int, end: int) -> ShardRecord | None:
    """The record of a shard already present and complete (all its seeds, in order), or None to write it again."""
    name = shard_name(start, end)
    try:
        data = storage.read_bytes(storage.join(out, name))
        seeds = pq.read_table(pa.BufferReader(data), columns=["seed"]).column("seed").to_pylist()
    except (storage.ObjectNotFound, pa.ArrowInvalid):
        return None
    if seeds != list(range(start, end)):
        return None
    return ShardRecord(file=name, start=start, end=end, rows=len(seeds), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
