"""The layers whose filters AdAM and RICK score, as their reference code hard-codes them for 256 px.

G: every styled conv in `convs` (`range(12)` at 256 px; not the 4x4 `conv1`, not the ToRGBs). D: every
residual block's conv1, conv2 and skip (`range(1, 7)` at 256 px; not FromRGB, not the final layers).
"""

from __future__ import annotations

from fsg_ray.nets.stylegan2 import Discriminator, Generator, ResBlock


def g_layers(g: Generator) -> list[str]:
    """The styled convs' `ModulatedConv2d` modules, by name (`convs.0.conv`, ...)."""
    return [f"convs.{i}.conv" for i in range(len(g.convs))]


def d_layers(d: Discriminator) -> list[tuple[str, str | None]]:
    """(conv weight, its activation bias or None) of each scored D layer: per residual block conv1, conv2, skip."""
    layers: list[tuple[str, str | None]] = []
    for b, block in enumerate(d.convs):
        if isinstance(block, ResBlock):
            layers += [(f"convs.{b}.conv1.0.weight", f"convs.{b}.conv1.1.bias"), (f"convs.{b}.conv2.1.weight", f"convs.{b}.conv2.2.bias")]
            layers.append((f"convs.{b}.skip.1.weight", None))
    return layers
