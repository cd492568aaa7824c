"""Per-image diagonal Fisher information of G and D, as AdAM's and RICK's reference code estimates it.

Both rank filters by the squared gradients of single images' GAN losses: for G, of its non-saturating loss
softplus(-D(G(z))); for D, of its logistic loss softplus(-D(x)) + softplus(D(G(z))) on one real x and that
fake. F is the mean of the squared gradients over the images, one gradient per image (D sees one image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg_ray.nets.stylegan2 import Discriminator, Generator


def per_image_fisher(
    g: Generator, d: Discriminator, g_params: dict[str, Tensor], d_params: dict[str, Tensor], z: Tensor, reals: Tensor, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """F of `g_params` under G's loss and of `d_params` under D's, averaged over the rows of `z` and `reals`.

    G's per-pixel noise comes from `seed` on a forked RNG: reproducible, and the caller's stream untouched. The
    parameters get gradients for the estimate only; their `requires_grad` is restored after it.
    """
    fisher_g = {k: torch.zeros_like(v) for k, v in g_params.items()}
    fisher_d = {k: torch.zeros_like(v) for k, v in d_params.items()}
    params = [*g_params.values(), *d_params.values()]
    flags = [p.requires_grad for p in params]
    device = z.device
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for one_z, real in zip(z, reals):
                fake_logit = d(g(one_z[None], noise="random"))
                g_loss = F.softplus(-fake_logit).mean()
                d_loss = F.softplus(-d(real[None])).mean() + F.softplus(fake_logit).mean()
                for fisher, loss, wrt, retain in ((fisher_g, g_loss, g_params, True), (fisher_d, d_loss, d_params, False)):
                    grads = torch.autograd.grad(loss, list(wrt.values()), retain_graph=retain, allow_unused=True)
                    for name, grad in zip(wrt, grads):
                        if grad is not None:
                            fisher[name] += grad.pow(2)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    n = len(z)
    return {k: f / n for k, f in fisher_g.items()}, {k: f / n for k, f in fisher_d.items()}
