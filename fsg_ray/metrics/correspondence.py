"""Correspondence between a source generator and its adaptation (SPEC §4): does G_t(z) keep what G_s(z) shows?

Two measures. `correspondence_error` needs the target to be a known transform of the source (toy
sketch, painting): the distance from G_t(z) to transform(G_s(z)), 0 when perfect. `correspondence_ratio`
needs nothing about the target, so it works for a user's own folder: how much closer G_t(z) is to
G_s(z) than to G_s(z') of another z, in edge structure and in a perceptual distance; 1 means no
correspondence, higher is better. Both generators always get the same z and the source's stored noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsg_ray.grids import stored_noise
from fsg_ray.metrics.features import Generator, generated_images
from fsg_ray.metrics.lpips_cluster import LpipsModel, build_stlpips

# Luma weights (ITU-R BT.601) and the Sobel kernels of the edge maps.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)


def _paired_samples(G_s: Generator, G_t: Generator, n: int, seed: int, batch_size: int, truncation: float) -> tuple[Tensor, Tensor]:
    """`n` seeded G_s(z) and G_t(z) on the CPU, row i from the same z, both through G_s's stored noise."""
    noise = stored_noise(G_s)
    sources = torch.cat([b.cpu() for b in generated_images(G_s, n, batch_size, seed, truncation, noise)])
    targets = torch.cat([b.cpu() for b in generated_images(G_t, n, batch_size, seed, truncation, noise)])
    if sources.shape != targets.shape:
        raise ValueError(f"G_s makes images of shape {tuple(sources.shape[1:])}, G_t {tuple(targets.shape[1:])}")
    return sources, targets


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
) -> dict[str, Any]:
    """Mean L1 (in [-1, 1] units) and LPIPS between transform(G_s(z)) and G_t(z) over `n` seeded z.

    `lpips_model` defaults to ST-LPIPS (VGG). Returns {"corr_l1", "corr_" + model key (corr_stlpips
    or corr_lpips), "lpips": model name, "n", "per_sample": {each of the two keys: [n] distances, row i
    from z i}}.
    """
    lpips_model = lpips_model or build_stlpips()
    sources, targets = _paired_samples(G_s, G_t, n, seed, batch_size, truncation)
    expected = transform(sources)
    if expected.shape != targets.shape:
        raise ValueError(f"transform(G_s(z)) has shape {tuple(expected.shape)}, G_t(z) has {tuple(targets.shape)}")
    per_sample = {
        "corr_l1": (expected - targets).abs().mean(dim=(1, 2, 3)).numpy().astype(np.float64),
        f"corr_{lpips_model.key}": lpips_model.distance(expected, targets, batch_size).flatten().cpu().numpy().astype(np.float64),
    }
    return {**{key: float(values.mean()) for key, values in per_sample.items()}, "lpips": lpips_model.name, "n": n, "per_sample": per_sample}


def edge_maps(images: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luma, 2x average-pooled (a one-pixel shift barely changes it): [N, H/2 * W/2].

    Gradient magnitude ignores the sign of an edge, so an inverted or recoloured image keeps the map.
    """
    luma = (images * _LUMA.to(images.device)).sum(dim=1, keepdim=True)
    kernel = torch.cat([_SOBEL_X, _SOBEL_X.transpose(2, 3)]).to(images.device)
    gradients = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernel)
    return F.avg_pool2d(gradients.norm(dim=1, keepdim=True), 2).flatten(1)


def edge_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - Pearson correlation of the edge maps of a[i] and b[i], [N]: 0 for the same structure, ~1 for unrelated."""
    ea, eb = edge_maps(a), edge_maps(b)
    ea = ea - ea.mean(dim=1, keepdim=True)
    eb = eb - eb.mean(dim=1, keepdim=True)
    return (1 - F.cosine_similarity(ea, eb, dim=1, eps=1e-8)).clamp(min=0)  # rounding can push 1 - 1 below 0


@torch.no_grad()
def correspondence_ratio(
    G_s: Generator,
    G_t: Generator,
    n: int = 256,
    seed: int = 0,
    batch_size: int = 32,
    truncation: float = 1.0,
    lpips_model: LpipsModel | None = None,
) -> dict[str, Any]:
    """How much closer G_t(z) is to G_s(z) than to G_s of another z: mean shuffled distance / mean matched distance.

    Over `n` seeded z (n >= 2); "shuffled" pairs G_t(z_i) with G_s(z_{i+1 mod n}), a different z for
    every i. Two distances: edge structure (`edge_distance`) and LPIPS (`lpips_model`, ST-LPIPS VGG by
    default). A ratio of 1 means G_t(z) has nothing more in common with G_s(z) than with any source
    sample; an unadapted copy of G_s (identical images) gives infinite ratios.
    Returns {"corr_edge_ratio", "corr_" + model key + "_ratio", "lpips", "n", each mean distance
    as "edge_matched", "edge_shuffled", key + "_matched", key + "_shuffled", and "per_sample": those four as [n] arrays}.
    """
    if n < 2:
        raise ValueError(f"correspondence_ratio needs n >= 2 samples to shuffle, got {n}")
    lpips_model = lpips_model or build_stlpips()
    sources, targets = _paired_samples(G_s, G_t, n, seed, batch_size, truncation)
    shuffled = sources.roll(1, dims=0)
    key = lpips_model.key
    per_sample = {
        "edge_matched": edge_distance(targets, sources),
        "edge_shuffled": edge_distance(targets, shuffled),
        f"{key}_matched": lpips_model.distance(targets, sources, batch_size).flatten(),
        f"{key}_shuffled": lpips_model.distance(targets, shuffled, batch_size).flatten(),
    }
    per_sample = {name: values.cpu().numpy().astype(np.float64) for name, values in per_sample.items()}
    distances = {name: float(values.mean()) for name, values in per_sample.items()}
    # Identical images leave only rounding error in the matched distances: the ratio is infinite, not 1e7.
    identical = torch.equal(targets, sources)
    ratios = {f"corr_{what}_ratio": _ratio(distances[f"{what}_shuffled"], distances[f"{what}_matched"], identical) for what in ("edge", key)}
    return {**ratios, "lpips": lpips_model.name, "n": n, **distances, "per_sample": per_sample}


def _ratio(shuffled: float, matched: float, identical: bool) -> float:
    return math.inf if identical or matched == 0 else shuffled / matched
