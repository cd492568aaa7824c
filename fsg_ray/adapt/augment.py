"""Adaptive differentiable augmentation of everything D sees (ADA, Karras et al. 2020), for any method.

Augmenting reals and fakes alike (and differentiably, so G's gradient passes through) keeps the
augmentations from leaking into G's samples; the controller raises p while D is over-confident on the
reals, E[sign(D(real))] > target, and lowers it otherwise. The augmentations are ADA's pixel blitting,
isotropic scaling and colour groups without its arbitrary rotation, anisotropic scaling, fractional
translation, luma flip and hue rotation: x-flip, 90-degree rotations, integer translation (up to 1/8 of
the size, reflected at the borders), isotropic scaling (log2-normal, std 0.2), brightness (+N(0, 0.2)),
contrast (x 2^N(0, 0.5)) and saturation (x 2^N(0, 1) about the luma axis). Each is applied to each
image with probability p; randomness comes from torch's global RNG, which the loop reseeds every step.
On with `augment.enabled` for any method (the reference trains CDC with it); always on for `ada`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg_ray.config import AugmentConfig

TRANSLATE_MAX = 0.125
SCALE_STD = 0.2
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
SATURATION_STD = 1.0


def _chosen(batch: int, p: float, device: torch.device) -> Tensor:
    return (torch.rand(batch, device=device) < p).view(batch, 1, 1, 1)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Fold out-of-range pixel indices back into [0, size) by mirroring at the border pixels."""
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _translate(x: Tensor, shift: Tensor) -> Tensor:
    """Shift each image by whole pixels `shift` [B, 2] (x, y), as gathers so gradients reach every input pixel."""
    b, c, h, w = x.shape
    rows = _reflect(torch.arange(h, device=x.device) - shift[:, 1:], h)
    cols = _reflect(torch.arange(w, device=x.device) - shift[:, :1], w)
    x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _scale(x: Tensor, factor: Tensor) -> Tensor:
    """Zoom each image about its centre by `factor` [B] with bilinear resampling and mirrored borders."""
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment(x: Tensor, p: float) -> Tensor:
    """ADA-style augmentation with probability p per transform and image; exactly the identity at p = 0."""
    if p <= 0:
        return x
    b, device = x.shape[0], x.device
    x = torch.where(_chosen(b, p, device) & (torch.rand(b, 1, 1, 1, device=device) < 0.5), x.flip(3), x)
    turns = torch.randint(0, 4, (b,), device=device)
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])[turns, torch.arange(b, device=device)]
    x = torch.where(_chosen(b, p, device), rotated, x)
    shift = torch.round((torch.rand(b, 2, device=device) * 2 - 1) * TRANSLATE_MAX * torch.tensor(x.shape[3:1:-1], device=device)).long()
    x = torch.where(_chosen(b, p, device), _translate(x, shift), x)
    x = torch.where(_chosen(b, p, device), _scale(x, torch.exp2(torch.randn(b, device=device) * SCALE_STD)), x)
    x = torch.where(_chosen(b, p, device), x + torch.randn(b, 1, 1, 1, device=device) * BRIGHTNESS_STD, x)
    x = torch.where(_chosen(b, p, device), x * torch.exp2(torch.randn(b, 1, 1, 1, device=device) * CONTRAST_STD), x)
    luma = x.mean(dim=1, keepdim=True)
    saturation = torch.exp2(torch.randn(b, 1, 1, 1, device=device) * SATURATION_STD)
    return torch.where(_chosen(b, p, device), luma + (x - luma) * saturation, x)


class AdaptiveAugment:
    """The augmentation D's inputs go through, with ADA's controller of its strength p (starts at 0)."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.p = 0.0
        self.sign_sum = 0.0  # since the last adjustment: sum over reals of sign(D(real)), patch signs averaged
        self.images = 0
        self.steps = 0

    def __call__(self, images: Tensor) -> Tensor:
        return augment(images, self.p)

    def observe_real_logits(self, logits: Tensor, total: Callable[[Tensor], Tensor]) -> None:
        """Every `augment.interval` D steps: p += sign(r_t - target) * images / (kimg * 1000), clamped to [0, 1].

        r_t and the image count are of the global batch: every worker adjusts at the same step from the
        same sums, so all workers keep one p (ADA's p is a property of the run, not of a worker).
        """
        options = self.config
        self.sign_sum += logits.sign().flatten(1).mean(dim=1).sum().item()
        self.images += logits.shape[0]
        self.steps += 1
        if self.steps < options.interval:
            return
        sign_sum, images = total(torch.tensor([self.sign_sum, float(self.images)], dtype=torch.float64)).tolist()
        r_t = sign_sum / images
        direction = (r_t > options.target) - (r_t < options.target)
        self.p = min(max(self.p + direction * images / (options.kimg * 1000), 0.0), 1.0)
        self.sign_sum, self.images, self.steps = 0.0, 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "sign_sum": self.sign_sum, "images": self.images, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p, self.sign_sum, self.images, self.steps = state["p"], state["sign_sum"], state["images"], state["steps"]
