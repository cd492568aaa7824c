"""Anchor regions (SPEC §3): which iterations get image-level realism, and the latents they use.

Only a few small regions of Z around fixed anchor latents are pushed to look exactly like the
training images (image-level D); everywhere else G only has to produce realistic patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fsg_ray.config import AnchorConfig


def is_anchor_iteration(step: int, config: AnchorConfig) -> bool:
    return step % config.every == 0


def make_anchors(config: AnchorConfig, style_dim: int, generator: torch.Generator) -> Tensor:
    """The run's fixed anchor latents z_a ~ N(0, I), drawn once and stored in every checkpoint."""
    return torch.randn(config.count, style_dim, generator=generator)


def sample_near_anchors(anchors: Tensor, batch: int, std: float, generator: torch.Generator) -> Tensor:
    """z = z_a[k] + std * eps, k uniform with replacement, in Z space."""
    index = torch.randint(0, anchors.shape[0], (batch,), generator=generator)
    return anchors[index] + std * torch.randn(batch, anchors.shape[1], generator=generator)


@dataclass(frozen=True)
class Latents:
    """What G is fed in one phase: one z (or two for style mixing) and where the second takes over."""

    z: list[Tensor]
    inject_index: int | None


def sample_latents(batch: int, style_dim: int, mixing: float, n_latent: int, generator: torch.Generator) -> Latents:
    """z ~ N(0, I); with probability `mixing` two codes crossed at a uniform layer."""
    if torch.rand((), generator=generator).item() < mixing:
        z = list(torch.randn(2, batch, style_dim, generator=generator).unbind(0))
        return Latents(z, int(torch.randint(1, n_latent, (), generator=generator)))
    return Latents([torch.randn(batch, style_dim, generator=generator)], None)


def phase_latents(
    step: int, batch: int, style_dim: int, anchors: Tensor | None, config: AnchorConfig, mixing: float, n_latent: int, generator: torch.Generator
) -> Latents:
    """The latents of one D or G phase: near the anchors on anchor iterations, else mixed N(0, I).

    `anchors` is None for methods without anchor regions: every iteration is then a mixed one.
    """
    if anchors is not None and is_anchor_iteration(step, config):
        return Latents([sample_near_anchors(anchors, batch, config.std, generator)], None)
    return sample_latents(batch, style_dim, mixing, n_latent, generator)
