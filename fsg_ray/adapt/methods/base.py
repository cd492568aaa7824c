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

    def __init__(self, config: AdaptConfig):
        self.config = config

    def setup(self, nets: Networks) -> None:
        """Called once after the networks are initialised and before the optimisers are built."""

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.g.parameters())

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.d.parameters()) + list(nets.heads.parameters())

    def augment(self, images: Tensor) -> Tensor:
        """Applied to reals and fakes before D sees them."""
        return images

    def observe_real_logits(self, logits: Tensor) -> None:
        """Sees D's logits on the reals of every D step (adaptive augmentation tunes itself on them)."""

    def g_penalty(self, nets: Networks) -> Tensor | None:
        """An extra term of the G loss (e.g. a weight-space penalty), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Method state that an exact resume needs."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
