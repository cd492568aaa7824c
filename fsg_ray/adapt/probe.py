"""AdAM's importance probing (reference: AdAM_importance_probing.py): which source kernels matter for the target.

Kernel modulation is attached to the source G and D; for `adam.probe_steps` iterations the unchanged loop
trains only the modulation vectors (of G, and of D together with D's final conv and linears) on the few
shots, with the reference's fixed EMA (decay 0.5^(32/10000)) of G and D. Then the diagonal Fisher
information of the modulation vectors of the EMA networks is averaged over `adam.fisher_batches * batch`
generated images, one gradient per image: G's of its non-saturating loss softplus(-D(G(z))), D's of its
logistic loss on that fake and one real shot. The probe's own modulation values are discarded; the main
adaptation (methods/adam.py) starts fresh vectors and uses only the Fisher, to rank kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fsg_ray.adapt.fisher import per_image_fisher
from fsg_ray.adapt.kernel_modulation import KernelModulation, discriminator_sites, generator_sites
from fsg_ray.adapt.loop import Adaptation, SingleProcess, init_networks
from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.adapt.probe_artifact import probe_identity
from fsg_ray.config import REFERENCE_EMA_DECAY, AdaptConfig
from fsg_ray.data.images import FewShotImages
from fsg_ray.nets.stylegan2 import Discriminator, Generator


class Probing(Method):
    """The probing run as a method of the loop: only modulation vectors (and D's final layers) train."""

    name = "adam-probe"

    def setup(self, nets: Networks) -> None:
        nets.g.requires_grad_(False)
        nets.d.requires_grad_(False)
        rng = torch.Generator().manual_seed(self.config.seed)
        self.g = KernelModulation(nets.g, generator_sites(nets.g), rng).attach()
        self.d = KernelModulation(nets.d, discriminator_sites(nets.d), rng).attach()
        self.d_final = [*nets.d.final_conv.parameters(), *nets.d.final_linear.parameters()]
        self.g_ema = KernelModulation(nets.g_ema, generator_sites(nets.g_ema), rng).attach()
        # The reference also averages D (its Fisher is measured on the averaged D), starting from the source d.
        self.d_ema_net = Discriminator(nets.d.config).to(next(nets.d.parameters()).device).eval()
        self.d_ema_net.load_state_dict(nets.d.state_dict())
        self.d_ema_net.requires_grad_(False)
        self.d_ema = KernelModulation(self.d_ema_net, discriminator_sites(self.d_ema_net), rng).attach()

    def g_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return self.g.parameters()

    def d_parameters(self, nets: Networks) -> list[nn.Parameter]:
        return self.d.parameters() + self.d_final

    @torch.no_grad()
    def average(self, nets: Networks, decay: float) -> None:
        """The EMA of what the loop's own EMA does not cover: G's vectors, and D with its vectors."""
        pairs = [*zip(self.g_ema.parameters(), self.g.parameters()), *zip(self.d_ema_net.parameters(), nets.d.parameters())]
        pairs += zip(self.d_ema.parameters(), self.d.parameters())
        for p_ema, p in pairs:
            p_ema.lerp_(p, 1.0 - decay)


def fisher_information(
    g: Generator, d: Discriminator, g_mod: KernelModulation, d_mod: KernelModulation, targets: FewShotImages, samples: int, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-image Fisher (fsg_ray/adapt/fisher.py) of G's and D's modulation vectors over `samples` images.

    z and the shots come from `seed`, drawn in the reference's order (a z, then a shot, per image).
    """
    rng = torch.Generator().manual_seed(seed)
    draws = [(torch.randn(1, g.style_dim, generator=rng), targets.sample(1, rng)) for _ in range(samples)]
    device = next(g.parameters()).device
    z, reals = (torch.cat(column).to(device) for column in zip(*draws))
    return per_image_fisher(g, d, g_mod.vectors, d_mod.vectors, z, reals, seed)


def run_probe(source: dict[str, Any], targets: FewShotImages, config: AdaptConfig, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The probe of this source, shots and config: its identity (probe_artifact.py) and the two Fisher dicts.

    Seeded from `config.seed` on a forked RNG: the same inputs give the same probe in any process, and the
    caller's random state (which seeds, e.g., the patch heads identically on every Ray worker) is untouched.
    """
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        probing = Probing(config)
        run = Adaptation(init_networks(source, device), targets, config, SingleProcess(), probing)
        run.ema_decay = REFERENCE_EMA_DECAY  # the reference probes with its fixed decay, whatever the run length
        for _ in range(config.adam.probe_steps):
            run.train_step()  # the loop's `average` hook advances the probe's own EMAs
        samples = config.adam.fisher_batches * config.batch
        fisher_g, fisher_d = fisher_information(run.nets.g_ema, probing.d_ema_net, probing.g_ema, probing.d_ema, run.targets, samples, config.seed)
    return {**probe_identity(source, targets.images, config), "fisher_g": {k: v.cpu() for k, v in fisher_g.items()}, "fisher_d": {k: v.cpu() for k, v in fisher_d.items()}}
