"""What an adaptation method may change in the shared loop; the defaults are plain fine-tuning (TGAN).

Each method is one small file that overrides only the hooks that make it that method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fsg_ray.config import AdaptConfig
from fsg_ray.nets.stylegan2 import Discriminator, Generator, PatchHeads


@dataclass
class Networks:
    """The five networks of a run: trainable G_t, frozen source G_s, EMA G, D and its patch heads."""

    g: Generator
    g_source: Generator
    g_ema: Generator
    d: Discriminator
    heads: PatchHeads


class Method:
    name = "tgan"
    uses_cdc = False
    uses_anchors = False
    uses_path_length = True  # False where G's own weights are frozen: the regulariser has nothing to shape
    augments = False  # True: D always sees adaptively augmented images, whatever `augment.enabled` says (ada)

    def __init__(self, config: AdaptConfig):
        self.config = config

    def setup(self, nets: Networks) -> None:
        """Called once after the networks are initialised and before the optimisers are built."""

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.g.parameters())

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.d.parameters()) + list(nets.heads.parameters())

    def map_z(self, z: list[Tensor]) -> list[Tensor]:
        """Transforms the z of the D, G and path-length phases before G's mapping network (MineGAN mines them)."""
        return z

    def g_penalty(self, nets: Networks) -> Tensor | None:
        """An extra term of the G loss (e.g. a weight-space penalty), or None."""
        return None

    def ema_target(self, nets: Networks) -> list[Tensor]:
        """What G_ema follows, in `Generator.parameters()` order: G_t's own weights unless a method trains G
        through extra parameters, which it then folds into plain weights so G_ema stays an exportable `Generator`."""
        return list(nets.g.parameters())

    def state_dict(self) -> dict[str, Any]:
        """Method state that an exact resume needs."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
