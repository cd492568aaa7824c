"""BSA (Noguchi & Harada 2019) adapted to StyleGAN2: train only a scale and shift per modulated conv.

BSA keeps every source weight and learns only new per-channel scales and shifts of the generator's
batch statistics: few enough parameters for ten images. StyleGAN2 has no batch normalisation; its
per-channel statistics are set by the style modulation s = A(w), so each modulated conv gets gamma,
beta (size in_channels, init 1 and 0) and uses gamma * s + beta. Since A is affine this folds exactly
into A's weight and bias, which is how G_ema follows training and how a run exports: a plain
`Generator` in the field's format, with no extra keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.nets.stylegan2 import EqualLinear, Generator, ModulatedConv2d


def modulations(g: Generator) -> dict[str, EqualLinear]:
    """The style affine A of every modulated conv (the styled convs and the ToRGBs), keyed by module name."""
    return {f"{name}.modulation": m.modulation for name, m in g.named_modules() if isinstance(m, ModulatedConv2d)}


def fold(a: EqualLinear, gamma: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Stored weight and bias of the affine x -> gamma * A(x) + beta (A computes x W^T scale + b lr_mul)."""
    return gamma[:, None] * a.weight, gamma * a.bias + beta / a.lr_mul


def folded_state(g: Generator, gamma: dict[str, Tensor], beta: dict[str, Tensor]) -> dict[str, Tensor]:
    """G's state dict with every modulation replaced by its folded scale and shift: the adapted G, exportable."""
    state = dict(g.state_dict())
    for name, a in modulations(g).items():
        state[f"{name}.weight"], state[f"{name}.bias"] = fold(a, gamma[name], beta[name])
    return state


class BSA(Method):
    name = "bsa"
    uses_path_length = False

    def setup(self, nets: Networks) -> None:
        """Freezes G and hooks each modulation of G_t so that it computes the folded affine."""
        nets.g.requires_grad_(False)
        self.gamma: dict[str, nn.Parameter] = {}
        self.beta: dict[str, nn.Parameter] = {}
        for name, a in modulations(nets.g).items():
            self.gamma[name] = nn.Parameter(torch.ones_like(a.bias))
            self.beta[name] = nn.Parameter(torch.zeros_like(a.bias))
            a.register_forward_hook(self._modulate(name))

    def _modulate(self, name: str):
        """A forward hook replacing A(x) by the folded affine: the same arithmetic as the exported G, bit for bit."""

        def hook(a: EqualLinear, inputs: tuple[Tensor], _: Tensor) -> Tensor:
            weight, bias = fold(a, self.gamma[name], self.beta[name])
            return F.linear(inputs[0], weight * a.scale, bias * a.lr_mul)

        return hook

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return [p for name in self.gamma for p in (self.gamma[name], self.beta[name])]

    def ema_target(self, nets: Networks) -> list[Tensor]:
        state = folded_state(nets.g, self.gamma, self.beta)
        return [state[name] for name, _ in nets.g.named_parameters()]

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": {k: v.detach().clone() for k, v in self.gamma.items()}, "beta": {k: v.detach().clone() for k, v in self.beta.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name in self.gamma:
                self.gamma[name].copy_(state["gamma"][name])
                self.beta[name].copy_(state["beta"][name])
