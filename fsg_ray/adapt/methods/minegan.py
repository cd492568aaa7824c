"""MineGAN (Wang et al. 2020): a small miner network in front of a frozen G, trained adversarially with D.

Instead of changing G, the miner learns where in the source latent space the target-like samples are
and steers z there, so every G weight stays the source's. The miner is no part of the field's checkpoint
format: it travels in the run's method state, and a MineGAN run's exported or loaded generator is the
frozen G; sample the adapted distribution with `g(load_miner(ckpt)(z))`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.nets.checkpoints import CheckpointError


class Miner(nn.Module):
    """z -> z + MLP(z), two linear layers with a leaky ReLU between; the last starts at zero, so mining starts
    from the identity, i.e. from the source distribution."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor) -> Tensor:
        return z + self.out(F.leaky_relu(self.hidden(z), 0.2))


def load_miner(ckpt: dict[str, Any]) -> Miner:
    """The trained miner of a MineGAN checkpoint (as `read_checkpoint` returns it)."""
    if ckpt.get("method") != MineGAN.name:
        raise CheckpointError(f"{ckpt.get('uri', 'checkpoint')}: a {ckpt.get('method')!r} run has no miner; only 'minegan' runs do")
    state = ckpt["method_state"]["miner"]
    miner = Miner(state["hidden.weight"].shape[1])
    miner.load_state_dict(state)
    return miner.eval().requires_grad_(False)


class MineGAN(Method):
    name = "minegan"
    uses_path_length = False

    def setup(self, nets: Networks) -> None:
        """Freezes G and builds the miner from the run's seed (a forked RNG leaves the caller's stream alone)."""
        nets.g.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.miner = Miner(nets.g.style_dim)
        self.miner.to(next(nets.g.parameters()).device)

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return list(self.miner.parameters())

    def map_z(self, z: list[Tensor]) -> list[Tensor]:
        return [self.miner(x) for x in z]

    def state_dict(self) -> dict[str, Any]:
        return {"miner": self.miner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.miner.load_state_dict(state["miner"])
