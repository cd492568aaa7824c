"""What samples a run: its EMA generator, or for a MineGAN run that generator behind its trained miner."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fsg_ray.adapt.methods.minegan import load_miner
from fsg_ray.nets.checkpoints import build_generator, read_checkpoint
from fsg_ray.nets.stylegan2 import Generator


class MinedGenerator(nn.Module):
    """A MineGAN run's sampler: its frozen G behind the trained miner, which is no part of `g_ema`."""

    def __init__(self, g: Generator, miner: nn.Module):
        super().__init__()
        self.g, self.miner = g, miner
        self.config, self.style_dim = g.config, g.style_dim

    @property
    def noises(self) -> nn.Module:
        """G's stored noise maps: what `grids.stored_noise` hands to a generator compared with this one."""
        return self.g.noises

    def forward(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        return self.g(self.miner(z), truncation=truncation, noise=noise)


def load_sampler(uri: str, device: torch.device | str = "cpu") -> tuple[Generator | MinedGenerator, dict[str, Any]]:
    """What samples a run: the EMA generator of a checkpoint; for a MineGAN run, behind its miner (G alone would show the source)."""
    ckpt = read_checkpoint(uri)
    return sampler_of(ckpt, device), ckpt


def sampler_of(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> Generator | MinedGenerator:
    """`load_sampler` of a checkpoint already read."""
    g = build_generator(ckpt)
    if ckpt.get("method") == "minegan":
        g = MinedGenerator(g, load_miner(ckpt))
    return g.to(device)
