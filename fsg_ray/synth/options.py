"""The options of `fsg synthesize`, checked once: those that decide the bytes written, and those that only decide speed."""

from __future__ import annotations

from dataclasses import dataclass

from fsg_ray.synth.render import BLOCK

NOISE_MODES = ("const", "seeded")
IMAGE_FORMATS = ("png", "webp", "jpeg")


class SynthError(ValueError):
    """A synthesis request that cannot be carried out as asked; the message names the bad value."""


@dataclass(frozen=True)
class DatasetOptions:
    """Everything that decides the dataset's bytes: a rerun into the same URI must ask for exactly these."""

    generator: str
    count: int
    seed_start: int = 0
    truncation: float = 1.0
    noise: str = "const"  # "const": the generator's stored noise maps; "seeded": per-seed maps drawn after the seed's z
    pair_with: str | None = None  # a source generator: its image of the same z (and noise) goes next to each image
    format: str = "png"
    size: int | None = None  # output side in pixels; None keeps the generator's resolution
    shard_rows: int = 1024
    with_latents: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise SynthError(f"count: expected a positive number of images, got {self.count}")
        if self.seed_start < 0:
            raise SynthError(f"seed_start: seeds are non-negative, got {self.seed_start}")
        if self.shard_rows < 1:
            raise SynthError(f"shard_rows: expected a positive number of rows per shard, got {self.shard_rows}")
        if not 0.0 <= self.truncation <= 1.0:
            raise SynthError(f"truncation: expected a value in [0, 1], got {self.truncation}")
        if self.noise not in NOISE_MODES:
            raise SynthError(f"noise: expected one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.format not in IMAGE_FORMATS:
            raise SynthError(f"format: expected one of {', '.join(IMAGE_FORMATS)}, got {self.format!r}")
        if self.size is not None and self.size < 1:
            raise SynthError(f"size: expected a positive side in pixels, got {self.size}")


@dataclass(frozen=True)
class Scaling:
    """How the job runs; the images do not depend on any of it."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    batch: int = 4 * BLOCK  # seeds a worker renders before one copy to the host

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SynthError(f"workers: expected at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise SynthError(f"gpus_per_worker: expected a non-negative number, got {self.gpus_per_worker}")
        if self.batch < 1 or self.batch % BLOCK:
            raise SynthError(f"batch: expected a positive multiple of {BLOCK} (seeds are rendered in aligned blocks of {BLOCK}), got {self.batch}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"
