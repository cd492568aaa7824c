"""The user's target images: read a folder, zip or Parquet file, validate every image, sample batches.

A few-shot run learns from ~10 images, so one bad file matters: every image is decoded up front and
the first bad one is reported by name (path, zip member or Parquet row), never skipped.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from fsg_ray.data import toy

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


class TargetDataError(ValueError):
    """A target image source that cannot be used as it is; the message names the file and the reason."""


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _folder_items(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name)):
        yield str(path), path.read_bytes()


def _zip_items(archive: Path) -> Iterator[tuple[str, bytes]]:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise TargetDataError(f"{archive}: not a readable zip archive ({exc})") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        for member in sorted((m for m in members if _is_image_name(m.filename)), key=lambda m: m.filename):
            yield f"{archive}:{member.filename}", zf.read(member)


def _struct_kind(field: pa.Field) -> bool | None:
    """False for a binary column, True for a struct with a ``bytes`` field, None for anything else."""
    if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
        return False
    if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0:
        return True
    return None


def _image_column(schema: pa.Schema, column: str | None, source: Path) -> tuple[str, bool]:
    """The column holding encoded images, and whether it is a HuggingFace-style ``{bytes, path}`` struct."""
    if column is not None:
        if column not in schema.names:
            raise TargetDataError(f"{source}: no column {column!r}; columns are {schema.names}")
        is_struct = _struct_kind(schema.field(column))
        if is_struct is None:
            found = schema.field(column).type
            raise TargetDataError(f"{source}: column {column!r} has type {found}, not image bytes")
        return column, is_struct
    candidates = {f.name: _struct_kind(f) for f in schema if _struct_kind(f) is not None}
    if len(candidates) != 1:
        found = f"several ({sorted(candidates)})" if candidates else "none"
        raise TargetDataError(f"{source}: expected one image-bytes column, found {found}; pass column=")
    return next(iter(candidates.items()))


def _parquet_items(source: Path, column: str | None) -> Iterator[tuple[str, bytes | None]]:
    try:
        parquet = pq.ParquetFile(source)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TargetDataError(f"{source}: not a readable Parquet file ({exc})") from exc
    name, is_struct = _image_column(parquet.schema_arrow, column, source)
    row = 0
    for batch in parquet.iter_batches(columns=[name]):
        values = batch.column(0)
        if is_struct:
            values = values.field("bytes")
        for value in values.to_pylist():
            yield f"{source} row {row} (column {name!r})", value
            row += 1


def _decode(data: bytes | None, size: int) -> np.ndarray:
    """Encoded image -> [size, size, 3] uint8 RGB: shorter side resized to ``size`` (Lanczos), centre crop."""
    if not data:
        raise ValueError("zero bytes" if data is not None else "no image bytes (null)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes fully: truncated data fails here, not later
    except Image.UnidentifiedImageError as exc:
        raise ValueError("not a readable image") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, zlib.error... for damaged data
        raise ValueError(f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    image = _to_rgb(image)
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    # Resampling the centred square straight to size x size equals resize-then-crop, without rounding.
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit greyscale: scale, don't clip, to 8 bits
        eight_bit = (np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255)
        image = Image.fromarray(eight_bit.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _items(source: str | os.PathLike, column: str | None) -> Iterator[tuple[str, bytes | None]]:
    path = Path(source)
    if not path.exists():
        raise TargetDataError(f"{source}: no such file or folder")
    if path.is_dir():
        return _folder_items(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return _zip_items(path)
    if suffix == ".parquet":
        return _parquet_items(path, column)
    raise TargetDataError(f"{source}: expected a folder of images, a .zip or a .parquet file")


def load_images(source: str | os.PathLike, size: int, column: str | None = None) -> torch.Tensor:
    """Read every image of ``source`` as float32 [N, 3, size, size] in [-1, 1], RGB.

    ``source`` is a folder (its own files only, sorted by name, extensions in ``IMAGE_EXTENSIONS``,
    hidden files ignored), a ``.zip`` of images (same rules on member names), or a ``.parquet``
    file whose image column holds encoded image bytes, either plainly or as the ``{bytes, path}``
    struct HuggingFace datasets write; the single such column is found unless ``column`` names it.

    Each image is converted to RGB: greyscale and palette images are expanded, and transparent
    images (RGBA, LA, palette with transparency) are composited on white, so transparent regions
    become white rather than whatever colour the file stored under them. Then the shorter side is
    resized to ``size`` with Lanczos and the centre ``size`` x ``size`` square is kept.

    Raises TargetDataError naming the first bad image (zero bytes, not an image, truncated) and how
    many others are bad, after checking them all; also for a missing or empty source.
    """
    decoded: list[np.ndarray] = []
    bad: list[str] = []
    for name, data in _items(source, column):
        try:
            decoded.append(_decode(data, size))
        except ValueError as exc:
            bad.append(f"{name}: {exc}")
    if bad:
        more = f" (and {len(bad) - 1} more bad image(s))" if len(bad) > 1 else ""
        raise TargetDataError(bad[0] + more)
    if not decoded:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise TargetDataError(f"{source}: no images found (looked for {extensions})")
    array = np.stack(decoded)  # [N, H, W, 3] uint8
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()


def load_target(spec: str | os.PathLike, size: int) -> torch.Tensor:
    """The few-shot training images: ``toy:NAME`` is that domain's canonical 10-shot set, else a source."""
    name = _toy_name(spec)
    return toy.few_shot_set(name, size) if name else load_images(spec, size)


def load_eval_set(spec: str | os.PathLike, size: int, n: int) -> torch.Tensor:
    """Images to evaluate against: ``n`` held-out images of ``toy:NAME``, else every image of a source."""
    name = _toy_name(spec)
    return toy.held_out(name, n, size) if name else load_images(spec, size)


def _toy_name(spec: str | os.PathLike) -> str | None:
    if not (isinstance(spec, str) and spec.startswith("toy:")):
        return None
    name = spec.removeprefix("toy:")
    if name not in toy.TOY_DOMAINS:
        valid = ", ".join(f"toy:{d}" for d in toy.TOY_DOMAINS)
        raise TargetDataError(f"{spec}: unknown toy domain; valid: {valid}")
    return name


def warn_if_few(images: torch.Tensor, n_anchors: int) -> None:
    """Warn when there are fewer target images than anchors.

    The anchor count defaults to the shot count (SPEC §3); with fewer images than anchors the
    image-level discriminator sees too few reals to match the anchor regions it is meant to cover.
    """
    if len(images) < n_anchors:
        warnings.warn(
            f"only {len(images)} target image(s) for n_anchors={n_anchors}; "
            "the anchor count is meant to match the number of shots",
            UserWarning,
            stacklevel=2,
        )


class FewShotImages:
    """The few-shot training set: random batches with x-flip augmentation (SPEC §3)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
            raise TargetDataError(f"expected images of shape [N>0, 3, H, W], got {list(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``batch`` images drawn uniformly with replacement, each mirrored with probability 0.5.

        All randomness comes from ``generator``, so a seeded generator gives the same batches.
        """
        index = torch.randint(len(self.images), (batch,), generator=generator, device=generator.device)
        flip = torch.rand(batch, generator=generator, device=generator.device) < 0.5
        index, flip = index.to(self.images.device), flip.to(self.images.device)
        drawn = self.images[index]
        return torch.where(flip[:, None, None, None], drawn.flip(-1), drawn)
