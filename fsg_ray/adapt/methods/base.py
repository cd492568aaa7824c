"""What an adaptation method may change in the shared loop; the defaults are plain fine-tuning (TGAN).

Each method is one small file that overrides only the hooks that make it that method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fsg_ray.config import AdaptConfig, AnchorConfig, ConfigError
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets.stylegan2 import Discriminator, Generator, PatchHeads

if TYPE_CHECKING:
    from fsg_ray.adapt.loop import Adaptation


@dataclass
class Networks:
    """The five networks of a run: trainable G_t, frozen source G_s, EMA G, D and its patch heads."""

    g: Generator
    g_source: Generator
    g_ema: Generator
    d: Discriminator
    heads: PatchHeads


def check_patch_levels(config: AnchorConfig, d: Discriminator) -> None:
    """`anchors.patch_levels` may draw only among the patch maps this D has (SPEC §3: at most four)."""
    maps = len(d.patch_map_channels())
    if config.patch_levels > maps:
        raise ConfigError(f"anchors.patch_levels: the {d.config.size}px discriminator has {maps} patch maps (at 32 or 16 px), got {config.patch_levels}")


class Method:
    name = "tgan"
    uses_cdc = False
    uses_anchors = False
    uses_path_length = True  # False where G's own weights are frozen: the regulariser has nothing to shape
    augments = False  # True: D always sees adaptively augmented images, whatever `augment.enabled` says (ada)
    artifact: str | None = None  # a file the method computes once per run, before training, under the run URI (AdAM's probe)

    def __init__(self, config: AdaptConfig):
        self.config = config

    def check(self, d: Discriminator) -> None:
        """Checks this method's options against the architecture; raises ConfigError naming the key.

        Runs on the real D when a run starts and on a weightless (meta-device) D before Ray starts, so an
        option that cannot fit fails in one line on the driver rather than inside every worker.
        """
        if self.uses_anchors:
            check_patch_levels(self.config.anchors, d)

    def make_artifact(self, source: dict[str, Any], targets: FewShotImages, device: torch.device | str) -> dict[str, Any]:
        """Computes the run's `artifact` from the source checkpoint and the few shots (methods with one only)."""
        raise NotImplementedError(f"{self.name} has no per-run artifact")

    def use_artifact(self, artifact: dict[str, Any], source: dict[str, Any], targets: FewShotImages) -> None:
        """Adopts the run's `artifact` (computed now or read back) after checking it was made for this run."""
        raise NotImplementedError(f"{self.name} has no per-run artifact")

    def setup(self, nets: Networks) -> None:
        """Called once after the networks are initialised and before the optimisers are built."""

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.g.parameters())

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(nets.d.parameters()) + list(nets.heads.parameters())

    def phase_parameters(self, phase: str, params: list[nn.Parameter], step: int) -> list[nn.Parameter]:
        """Which of a phase's optimiser parameters (`phase` "d": the D and R1 steps; "g": the G and path-length
        steps) get gradients at `step`: all of them by default. With none, the G phase only scores a batch and
        steps nothing (RICK's warm-up, which also trains D's final layers only)."""
        return params

    def begin_step(self, run: Adaptation) -> None:
        """At the start of every iteration, its seeds set, before the D step (RICK estimates filter importance)."""

    def before_update(self, params: list[nn.Parameter]) -> None:
        """After a phase's gradients are averaged over ranks, before its optimiser steps `params` (RICK masks them)."""

    def average(self, nets: Networks, decay: float) -> None:
        """After G_ema's update, with its decay: averages of what G_ema does not cover (RICK's D_ema)."""

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

    def network_states(self, nets: Networks) -> dict[str, dict[str, Tensor]]:
        """G_t and D as checkpoints hold them under `g` and `d`, in the field's format (what export and
        `load_generator(which="g")` read): their own weights, unless a method trains them through extra
        parameters, which it then folds in (and keeps what a resume needs in its `state_dict`)."""
        return {"g": nets.g.state_dict(), "d": nets.d.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        """Method state that an exact resume needs."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
