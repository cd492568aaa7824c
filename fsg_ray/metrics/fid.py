"""FID and KID of a generator against real images (SPEC §4), with clean-fid's formulas.

With the Inception the keys are `fid` / `kid`; with the offline extractor they are `fid_offline` /
`kid_offline`, so an offline number can never be mistaken for a published one. FID fits a D x D
covariance per set, which is singular with D or fewer samples: it is only computed from more than D
samples per set (2049 for Inception), and smaller runs are ranked by KID, which is unbiased at any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cleanfid.fid import fid_from_feats, kernel_distance
from torch import Tensor

from fsg_ray.metrics.features import FeatureExtractor, Generator, build_extractor, generated_images

__all__ = ["FeatureExtractor", "build_extractor", "generated_images", "fid_from_features", "kid_from_features", "fid_undefined", "compute_fid_kid"]


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature arrays must be [N, D] with the same D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")


def fid_undefined(n_generated: int, n_real: int, dim: int) -> str | None:
    """Why FID from these sample counts would be meaningless (singular covariances), or None."""
    if min(n_generated, n_real) > dim:
        return None
    return (
        f"FID needs more than {dim} samples per set for {dim}-d features (got {n_generated} generated, {n_real} real): "
        "its covariances would be singular; rank by kid, or raise n_generated / n_real"
    )


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (clean-fid's implementation).

    Raises ValueError when either set has no more vectors than dimensions (see `fid_undefined`).
    """
    _check_pair(a, b)
    reason = fid_undefined(len(a), len(b), a.shape[1])
    if reason is not None:
        raise ValueError(reason)
    return float(fid_from_feats(a, b))


def kid_from_features(a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (clean-fid's KID).

    clean-fid draws the subsets from numpy's global RNG; it is seeded here and restored afterwards,
    so the value depends on `seed` only (not thread-safe against other users of np.random).
    """
    _check_pair(a, b)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(a, b, num_subsets=num_subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


def compute_fid_kid(
    G: Generator,
    real: Tensor | Iterable[Tensor] | np.ndarray,
    n_gen: int,
    extractor: FeatureExtractor,
    seed: int = 0,
    batch_size: int = 32,
    truncation: float = 1.0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    metrics: Sequence[str] = ("fid", "kid"),
) -> dict[str, float | int | str | np.ndarray]:
    """FID and KID of `n_gen` seeded samples of G against real images, or against their features.

    `real` is images (a tensor or batches of it) or the [N, D] features `extractor.features` made of
    them: periodic evaluation during training extracts the real set once and passes the array. FID
    is left out, with the reason under "fid_not_defined", when the counts make it singular.
    Returns {"fid"|"fid_offline", "kid"|"kid_offline", "extractor", "n_gen", "n_real"[, "fid_not_defined"],
    "fake_features": the [n_gen, D] features of the samples, row i from the seed's z i (for intervals)}.
    """
    fake = extractor.features(generated_images(G, n_gen, batch_size, seed, truncation), batch_size)
    real_features = real if isinstance(real, np.ndarray) else extractor.features(real, batch_size)
    suffix = "_offline" if extractor.offline else ""
    result: dict[str, float | int | str | np.ndarray] = {"extractor": extractor.name, "n_gen": len(fake), "n_real": len(real_features), "fake_features": fake}
    if "fid" in metrics:
        reason = fid_undefined(len(fake), len(real_features), extractor.dim)
        if reason is None:
            result[f"fid{suffix}"] = fid_from_features(fake, real_features)
        else:
            result["fid_not_defined"] = reason
    if "kid" in metrics:
        result[f"kid{suffix}"] = kid_from_features(fake, real_features, kid_subsets, kid_subset_size, seed)
    return result
