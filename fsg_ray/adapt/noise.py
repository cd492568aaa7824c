"""G's noise-injection strengths during adaptation: learned (the reference), frozen, or pulled toward the source.

Each styled conv adds `strength * N(0, 1)` per pixel. The strengths are the cheapest way for G to make
high-frequency texture, and with ten shots of strokes the adversarial game raises them until the images
are covered in grain (issue #20); `noise.strength` decides whether G may do that (config.NoiseConfig).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fsg_ray.adapt.methods.base import Networks
from fsg_ray.config import NoiseConfig
from fsg_ray.nets.stylegan2 import Generator, NoiseInjection


def strength_names(g: Generator) -> list[str]:
    """Parameter names of G's noise-injection strengths (`conv1.noise.weight`, `convs.0.noise.weight`, ...)."""
    return [f"{name}.weight" for name, module in g.named_modules() if isinstance(module, NoiseInjection)]


class NoiseStrengths:
    """The run's noise setting, applied to the strengths among the parameters the method trains.

    Methods that train no G weight (BSA, MineGAN) leave no strength to freeze or penalise, so the setting
    changes nothing for them.
    """

    def __init__(self, config: NoiseConfig, nets: Networks, trained: list[nn.Parameter]):
        self.config = config
        g, source = dict(nets.g.named_parameters()), dict(nets.g_source.named_parameters())
        trained_ids = {id(p) for p in trained}
        self.names = [name for name in strength_names(nets.g) if id(g[name]) in trained_ids]
        self.pairs = [(g[name], source[name]) for name in self.names]
        if config.strength == "frozen":
            # Without gradients at all: nothing accumulates in .grad for a parameter no optimiser steps.
            for strength, _ in self.pairs:
                strength.requires_grad_(False)

    @property
    def frozen(self) -> frozenset[str]:
        """Names G_ema must not update either: it keeps the source's `g_ema` strengths."""
        return frozenset(self.names) if self.config.strength == "frozen" else frozenset()

    def trainable(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """`params` without frozen strengths: outside the optimiser (its Adam state stays exact on resume) and
        outside the gradient all-reduce, identically on every rank since the list follows from the config."""
        frozen = {id(strength) for strength, _ in self.pairs} if self.config.strength == "frozen" else set()
        return [p for p in params if id(p) not in frozen]

    def penalty(self) -> Tensor | None:
        """`weight * sum_l (s_l - s_source_l)^2` for "penalised", else None."""
        if self.config.strength != "penalised" or not self.pairs:
            return None
        return self.config.weight * torch.stack([(s - s_source).pow(2).sum() for s, s_source in self.pairs]).sum()
