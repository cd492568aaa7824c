"""Correspondence error for image-space targets (DESIGN "Embedded default", SPEC §4).

When the target domain is a fixed transform of the source (toy sketch, painting), the adapted
generator should map each z to the transform of what the source generator makes of the same z.
The error measures how far G_t(z) is from transform(G_s(z)); 0 means perfect correspondence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fsg_ray.metrics.features import Generator, generated_images
from fsg_ray.metrics.lpips_cluster import LpipsModel, build_lpips


@torch.no_grad()
def correspondence_error(
    G_s: Generator,
    G_t: Generator,
    transform: Callable[[Tensor], Tensor],
    n: int = 256,
    seed: int = 0,
    batch_size: int = 32,
    truncation: float = 1.0,
    lpips_model: LpipsModel | None = None,
) -> dict[str, float | int | str]:
    """Mean L1 (in [-1, 1] units) and LPIPS between transform(G_s(z)) and G_t(z) over `n` seeded z.

    Both generators get the same z and noise="const" (each its own stored noise buffers, the same
    ones when G_t was adapted from G_s). Returns {"corr_l1", "corr_lpips"|"corr_lpips_offline",
    "lpips": model name, "n"}.
    """
    if lpips_model is None:
        lpips_model = build_lpips()
    l1_total, lpips_total = 0.0, 0.0
    sources = generated_images(G_s, n, batch_size, seed, truncation)
    targets = generated_images(G_t, n, batch_size, seed, truncation)
    for source, target in zip(sources, targets):
        expected = transform(source).to(target.device)
        if expected.shape != target.shape:
            raise ValueError(f"transform(G_s(z)) has shape {tuple(expected.shape)}, G_t(z) has {tuple(target.shape)}")
        l1_total += (expected - target).abs().mean(dim=(1, 2, 3)).sum().item()
        lpips_total += lpips_model.distance(expected, target, batch_size).sum().item()
    key = "corr_lpips_offline" if lpips_model.offline else "corr_lpips"
    return {"corr_l1": l1_total / n, key: lpips_total / n, "lpips": lpips_model.name, "n": n}
