"""FreezeD (Mo et al. 2020): TGAN with D's first, high-resolution blocks frozen at their source weights.

Those blocks hold generic low-level features learned from the large source set; with ten images they
would only overfit. Only the low-resolution blocks and D's head keep learning.
"""

from __future__ import annotations

from torch import nn

from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.config import ConfigError
from fsg_ray.nets.stylegan2 import Discriminator


def frozen_blocks(d: Discriminator, count: int) -> list[nn.Module]:
    """FromRGB (`convs.0`) and the `count` residual blocks after it, highest resolution first."""
    n_blocks = len(d.convs) - 1
    if count > n_blocks:
        raise ConfigError(f"baselines.freeze_d_blocks: the {d.config.size}px discriminator has {n_blocks} residual blocks, got {count}")
    return list(d.convs[: count + 1])


class FreezeD(Method):
    name = "freezed"

    def check(self, d: Discriminator) -> None:
        frozen_blocks(d, self.config.baselines.freeze_d_blocks)

    def setup(self, nets: Networks) -> None:
        blocks = frozen_blocks(nets.d, self.config.baselines.freeze_d_blocks)
        for block in blocks:
            block.requires_grad_(False)
        self.frozen = {id(p) for block in blocks for p in block.parameters()}

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for p in super().d_parameters(nets) if id(p) not in self.frozen]
