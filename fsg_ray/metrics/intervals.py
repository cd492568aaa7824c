"""Bootstrap intervals for the evaluation's numbers: how far a value could move with other samples.

Every metric here is a mean over samples (paired distances), over pairs of samples (the unbiased KID,
intra-cluster LPIPS) or a ratio of such means (gap closed). One bootstrap round redraws each sample set
with replacement, as multiplicities (`resample_counts`); a mean over pairs then skips pairs that are the
same original sample drawn twice, so a round is the same unbiased statistic on the redrawn set (the usual
bootstrap of a U-statistic; counting such pairs would add a self-similarity term the estimate never has).
Rounds that share one draw of counts give replicates of several generators that move together, which
is what an interval of a difference or ratio between them (gap closed) needs. Intervals are percentile
intervals of the replicates at `level`.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
ROUNDS = 1000
MAX_SET = 5000  # beyond this a set is bootstrapped through a seeded subset of this size (kernel matrices are n x n)


def resample_counts(n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """[rounds, n] multiplicities of the n samples in `rounds` draws of n with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of the finite replicates."""
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def mean_replicates(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[rounds] means of `values` [n] under each round's multiplicities."""
    return counts @ values / counts.sum(axis=1)


def pair_mean_replicates(pairwise: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[rounds] means of a symmetric [n, n] matrix over pairs of distinct original samples.

    With multiplicities c: (c^T M c - sum_i c_i^2 M_ii) / ((sum c)^2 - sum c_i^2). NaN for a round that
    drew a single sample n times (no pair).
    """
    quadratic = np.einsum("rn,rn->r", counts @ pairwise, counts)
    same = (counts**2) @ np.diag(pairwise)
    pairs = counts.sum(axis=1) ** 2 - (counts**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (quadratic - same) / pairs


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (clean-fid, Binkowski et al.): (a.b / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1) ** 3


class KidBootstrap:
    """Replicates of the unbiased KID (MMD^2, cubic kernel) of several generated sets against one real set.

    The generated sets are paired (row i of each from the same z), so one round redraws the same rows of
    every set and the same real rows: replicates of different generators share their draw.
    """

    def __init__(self, real: np.ndarray, n_generated: int, rounds: int = ROUNDS, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.real = self._subset(real)
        self.k_real = polynomial_kernel(self.real, self.real)
        n_fake = min(n_generated, MAX_SET)
        self.fake_rows = np.sort(self.rng.choice(n_generated, n_fake, replace=False)) if n_generated > MAX_SET else np.arange(n_generated)
        self.counts_fake = resample_counts(n_fake, rounds, self.rng)
        self.counts_real = resample_counts(len(self.real), rounds, self.rng)
        self.real_term = pair_mean_replicates(self.k_real, self.counts_real)

    def _subset(self, features: np.ndarray) -> np.ndarray:
        if len(features) <= MAX_SET:
            return features.astype(np.float64)
        return features[np.sort(self.rng.choice(len(features), MAX_SET, replace=False))].astype(np.float64)

    def replicates(self, fake: np.ndarray) -> np.ndarray:
        """[rounds] KID replicates of one generated set (its rows in the shared z order)."""
        fake = fake[self.fake_rows].astype(np.float64)
        fake_term = pair_mean_replicates(polynomial_kernel(fake, fake), self.counts_fake)
        cross = polynomial_kernel(fake, self.real)
        cross_term = np.einsum("rn,rn->r", self.counts_fake @ cross, self.counts_real) / (self.counts_fake.sum(axis=1) * self.counts_real.sum(axis=1))
        return fake_term + self.real_term - 2 * cross_term


def gap_closed(source: np.ndarray | float, generator: np.ndarray | float, ideal: np.ndarray | float) -> np.ndarray | float:
    """(M(source) - M(G)) / (M(source) - M(ideal)): 0 = no adaptation, 1 = the ideal, for lower-is-better M."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(source) - generator) / (np.asarray(source) - ideal)
