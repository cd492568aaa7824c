"""Target image sets by name, including closed-world targets whose ideal adapted generator is known.

A data-defined target (a folder, zip, Parquet file, or `toy:NAME`) says what the domain looks like but
not what a perfect adaptation of a given source would be. A closed-world target `closed:T[@SOURCE]`
is built from the source generator itself: its 10 shots are T(G_s(z_i)) for 10 fixed z, its held-out
set T(G_s(z')) for other fixed z', with T one of the toy image transforms (tint, sketch, painting,
negative) and G_s the generator at SOURCE (default the shipped `toy:faces`). The ideal adapted
generator is then T∘G_s, whatever the source's own quality, so an evaluation can say how much of the
way from the source to the ideal an adaptation went (fsg_ray.eval.protocol, "gap").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.data import images, toy
from fsg_ray.metrics.features import generated_images
from fsg_ray.nets.checkpoints import CheckpointError
from fsg_ray.storage import StorageError

CLOSED_PREFIX = "closed:"
DEFAULT_SOURCE = "toy:faces"
# The z streams of the shots and of the held-out set: fixed, different from each other and far from the
# small seeds (0, 1, ...) an evaluation draws its own samples from, so neither set shares a z with those.
SHOTS_SEED = 1_000_000_007
HELD_OUT_SEED = 1_000_000_009


class TargetError(ValueError):
    """A target name that cannot be resolved; the message names it and says what is valid."""


def _transform_names() -> list[str]:
    return [name for name in toy.TOY_DOMAINS if toy.image_transform(name) is not None]


@dataclass(frozen=True)
class ClosedWorldTarget:
    """`closed:T[@SOURCE]`: the toy image transform T applied to the samples of the source generator."""

    transform: str
    source: str = DEFAULT_SOURCE

    def __post_init__(self) -> None:
        if self.transform not in _transform_names():
            raise TargetError(f"{self.spec}: unknown transform {self.transform!r}; closed-world targets take one of {', '.join(_transform_names())}")
        if not self.source:
            raise TargetError(f"{self.spec}: empty source after '@'; name a generator URI or leave '@...' out for {DEFAULT_SOURCE}")

    @property
    def spec(self) -> str:
        return f"{CLOSED_PREFIX}{self.transform}" + ("" if self.source == DEFAULT_SOURCE else f"@{self.source}")

    def load_source(self, device: torch.device | str = "cpu") -> nn.Module:
        try:
            generator, _ = load_sampler(self.source, device)
        except (CheckpointError, StorageError, OSError, ValueError) as exc:
            raise TargetError(f"{self.spec}: cannot load its source generator {self.source}: {exc}") from exc
        return generator.eval()

    def ideal(self, device: torch.device | str = "cpu") -> IdealGenerator:
        """T∘G_s: what a perfect adaptation of the source to this target generates."""
        return IdealGenerator(self.load_source(device), self.transform)

    def images(self, n: int, seed: int, size: int) -> Tensor:
        """`n` images T(G_s(z)) for the z of `seed`'s stream, through G_s's stored noise, on the CPU."""
        ideal = self.ideal()
        if ideal.config.size != size:
            raise TargetError(f"{self.spec}: its source {self.source} makes {ideal.config.size} px images, {size} px were asked for")
        return torch.cat([batch.cpu() for batch in generated_images(ideal, n, seed=seed)])


class IdealGenerator(nn.Module):
    """The known answer of a closed-world target: G_s's sample for z, then the target's image transform."""

    def __init__(self, source: nn.Module, transform: str):
        super().__init__()
        self.source, self.transform_name = source, transform
        self.transform = toy.image_transform(transform)
        self.config, self.style_dim = source.config, source.style_dim

    @property
    def noises(self) -> nn.Module:
        return self.source.noises

    def forward(self, z: Tensor, truncation: float = 1.0, noise: Any = "const") -> Tensor:
        return self.transform(self.source(z, truncation=truncation, noise=noise).clamp(-1, 1))


def closed_world(spec: str | os.PathLike | None) -> ClosedWorldTarget | None:
    """The closed-world target `spec` names, or None for any other kind of target."""
    if not (isinstance(spec, str) and spec.startswith(CLOSED_PREFIX)):
        return None
    transform, _, source = spec.removeprefix(CLOSED_PREFIX).partition("@")
    return ClosedWorldTarget(transform, source if "@" in spec else DEFAULT_SOURCE)


def load_target(spec: str | os.PathLike, size: int) -> Tensor:
    """The few-shot training images of any target: a closed-world target's 10 shots, else data.images'."""
    closed = closed_world(spec)
    return closed.images(toy.FEW_SHOT_COUNT, SHOTS_SEED, size) if closed else images.load_target(spec, size)


def load_eval_set(spec: str | os.PathLike, size: int, n: int) -> Tensor:
    """Images to evaluate against: `n` held-out images of a closed-world or toy target, else the whole source."""
    closed = closed_world(spec)
    return closed.images(n, HELD_OUT_SEED, size) if closed else images.load_eval_set(spec, size, n)


def input_uris(spec: str | None) -> list[str | None]:
    """What a target name reads: itself, and for a closed-world target also its source generator (to ship to workers)."""
    closed = closed_world(spec)
    return [spec] if closed is None else [spec, closed.source]


def with_source_mapped(spec: str, change: Callable[[str], str]) -> str:
    """A closed-world target with `change` applied to its source URI (made absolute, or located on a worker)."""
    closed = closed_world(spec)
    if closed is None:
        raise TargetError(f"{spec}: not a closed-world target ({CLOSED_PREFIX}TRANSFORM[@SOURCE])")
    return dataclasses.replace(closed, source=change(closed.source)).spec


def locate_target(spec: str | None, locate: Callable[[str | None], str | None]) -> str | None:
    """Where a target is readable in this process: for a closed-world target, where its source generator is."""
    return with_source_mapped(spec, locate) if closed_world(spec) is not None else locate(spec)
