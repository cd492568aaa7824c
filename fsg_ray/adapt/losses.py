"""StyleGAN2's adversarial objective and its two lazy regularisers (R1, path length)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic D loss: softplus(-D(x)) + softplus(D(G(z))), patch logits averaged."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """Squared gradient norm of D at the reals, mean over the batch (gamma/2 is applied by the caller).

    Patch logits [B, 1, h, w] are averaged per image first, as the reference does: R1 is then taken on
    one number per image, whichever D mode produced it (summing would scale it by (h*w)^2).
    """
    per_image = real_logits.reshape(real_logits.shape[0], -1).mean(dim=1)
    (grad,) = torch.autograd.grad(per_image.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def path_length_penalty(images: Tensor, latents: Tensor, mean_path_length: float, decay: float) -> tuple[Tensor, float]:
    """Penalty on the deviation of |J_w^T y| from its running mean; returns (penalty, new running mean).

    y is image-space noise scaled by 1/sqrt(H*W) so the length does not depend on resolution.
    """
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), latents, create_graph=True)
    lengths = grad.pow(2).sum(dim=2).mean(dim=1).sqrt()
    new_mean = mean_path_length + decay * (lengths.mean().item() - mean_path_length)
    return (lengths - new_mean).pow(2).mean(), new_mean
