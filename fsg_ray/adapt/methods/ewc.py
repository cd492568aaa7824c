"""EWC (Li et al. 2020): TGAN plus lambda * sum_i F_i (theta_i - theta_source_i)^2 on G's weights.

The Fisher information F says how much each source weight matters for the source distribution, so the
weights that carry its diversity stay put while the unimportant ones adapt to the few shots.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg_ray.adapt.methods.base import Method, Networks
from fsg_ray.nets.stylegan2 import Discriminator, Generator


def fisher_diagonal(g: Generator, d: Discriminator, samples: int, batch: int, seed: int) -> dict[str, Tensor]:
    """Empirical Fisher diagonal of G's weights: the mean over generated images of the squared gradient of
    their log-likelihood proxy log sigmoid(D(G(z))) (Li et al. 2020: D's judgement of G's own samples).

    One gradient per image, while D sees the image within a batch of `batch` (its minibatch-stddev layer
    expects one). z and noise come from `seed` on a forked RNG, so the estimate is reproducible and the
    caller's random stream is untouched.
    """
    params = dict(g.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    trainable = {name: p.requires_grad for name, p in params.items()}
    g.requires_grad_(True)
    device = next(g.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, samples, batch):
                z = torch.randn(batch, g.style_dim, device=device)
                log_likelihood = F.logsigmoid(d(g(z, noise="random"))).flatten()
                for i in range(min(batch, samples - start)):
                    grads = torch.autograd.grad(log_likelihood[i], list(params.values()), retain_graph=True, allow_unused=True)
                    for name, grad in zip(params, grads):
                        if grad is not None:
                            fisher[name] += grad.pow(2)
    finally:
        for name, p in params.items():
            p.requires_grad_(trainable[name])
    return {name: f / samples for name, f in fisher.items()}


class EWC(Method):
    name = "ewc"

    def setup(self, nets: Networks) -> None:
        """Estimates F once, on the source G and the source D, before any step."""
        options = self.config.baselines
        self.fisher = fisher_diagonal(nets.g_source, nets.d, options.ewc_samples, self.config.batch, self.config.seed)

    def g_penalty(self, nets: Networks) -> Tensor:
        source = dict(nets.g_source.named_parameters())
        penalty = torch.stack([(self.fisher[name] * (p - source[name]).pow(2)).sum() for name, p in nets.g.named_parameters()]).sum()
        return self.config.baselines.ewc_weight * penalty

    def state_dict(self) -> dict[str, Any]:
        """F travels with the run, so a resume does not depend on re-estimating it bit for bit."""
        return {"fisher": self.fisher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = {name: f.to(self.fisher[name].device) for name, f in state["fisher"].items()}
