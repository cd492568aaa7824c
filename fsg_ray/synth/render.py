"""Seeds -> images, identical whatever batch, worker or resume renders them.

A float forward's result for one row can depend on the batch it is computed in (BLAS and conv kernels
pick code paths by batch shape: on this CPU, batch 1 and batch 7 differ from batch 16 in the last
bits). So a seed is always rendered inside its aligned block of BLOCK seeds, [k*BLOCK, (k+1)*BLOCK),
and a range that cuts a block renders the whole block and keeps its part. The z of seed s is
`grids.seeded_z`'s, so an image equals the one `fsg sample` draws for that seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fsg_ray.adapt.sampler import MinedGenerator
from fsg_ray.grids import seeded_z
from fsg_ray.nets.stylegan2 import Generator

BLOCK = 16

Sampler = Generator | MinedGenerator


@dataclass(frozen=True)
class RenderedRange:
    """Seeds [start, end): 8-bit HWC images, the source generator's images when paired, and the z."""

    start: int
    end: int
    images: np.ndarray  # [n, H, W, 3] uint8
    source_images: np.ndarray | None
    z: np.ndarray  # [n, style_dim] float32


def noise_shapes(sampler: Sampler) -> list[tuple[int, ...]]:
    """Shapes of the per-layer noise maps the generator (behind a miner, if any) takes."""
    g = sampler.g if isinstance(sampler, MinedGenerator) else sampler
    return [tuple(buffer.shape) for buffer in g.noises.as_list()]


def seeded_noise(seeds: list[int], style_dim: int, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """One map per layer for each seed, drawn from the seed's own stream after the z that seeded_z takes from it."""
    per_seed = []
    for seed in seeds:
        stream = torch.Generator().manual_seed(seed)
        torch.randn(style_dim, generator=stream)  # the seed's z; its noise follows, uncorrelated with it
        per_seed.append([torch.randn(shape, generator=stream) for shape in shapes])
    return [torch.cat(layer) for layer in zip(*per_seed)]


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] NCHW -> uint8 NHWC, rounding exactly as grids.to_pil does."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class RangeRenderer:
    """Renders seed ranges with a generator (and optionally a source) loaded once, on one device."""

    def __init__(self, sampler: Sampler, source: Sampler | None, truncation: float, noise: str, batch: int):
        self.sampler, self.source = sampler.eval(), (source.eval() if source is not None else None)
        self.truncation, self.noise, self.batch = truncation, noise, batch
        self.device = next(sampler.parameters()).device
        self.shapes = noise_shapes(sampler)

    @torch.no_grad()
    def _render_blocks(self, first_block: int, n_blocks: int) -> tuple[Tensor, Tensor | None]:
        """Images of seeds [first_block, first_block + n_blocks * BLOCK), one forward per block."""
        images, sources = [], []
        for block_start in range(first_block, first_block + n_blocks * BLOCK, BLOCK):
            seeds = list(range(block_start, block_start + BLOCK))
            z = seeded_z(seeds, self.sampler.style_dim).to(self.device)
            noise: str | list[Tensor] = "const"
            if self.noise == "seeded":
                noise = [maps.to(self.device) for maps in seeded_noise(seeds, self.sampler.style_dim, self.shapes)]
            images.append(to_uint8(self.sampler(z, truncation=self.truncation, noise=noise)))
            if self.source is not None:
                sources.append(to_uint8(self.source(z, truncation=self.truncation, noise=noise)))
        # One copy to the host per `batch` seeds: a GPU queues the blocks' kernels back to back.
        return torch.cat(images).cpu(), (torch.cat(sources).cpu() if sources else None)

    def render(self, start: int, end: int) -> RenderedRange:
        first = start - start % BLOCK
        blocks_per_step = self.batch // BLOCK
        images, sources = [], []
        for step_start in range(first, end, self.batch):
            n_blocks = min(blocks_per_step, -(-(end - step_start) // BLOCK))
            step_images, step_sources = self._render_blocks(step_start, n_blocks)
            keep = slice(max(start, step_start) - step_start, min(end, step_start + n_blocks * BLOCK) - step_start)
            images.append(step_images[keep])
            if step_sources is not None:
                sources.append(step_sources[keep])
        z = seeded_z(list(range(start, end)), self.sampler.style_dim)
        return RenderedRange(
            start=start,
            end=end,
            images=torch.cat(images).numpy(),
            source_images=torch.cat(sources).numpy() if sources else None,
            z=z.numpy(),
        )
