"""Bootstrap intervals (fsg_ray.metrics.intervals): exact on undisturbed draws, and they cover at about their rate."""

from __future__ import annotations

import numpy as np
import pytest

from fsg_ray.metrics.fid import kid_from_features
from fsg_ray.metrics.intervals import (
    KidBootstrap,
    gap_closed,
    mean_replicates,
    pair_mean_replicates,
    percentile_interval,
    polynomial_kernel,
    resample_counts,
)


def unbiased_kid(x: np.ndarray, y: np.ndarray) -> float:
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    n, m = len(x), len(y)
    return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()


def test_a_round_that_draws_every_sample_once_gives_the_statistic_itself():
    rng = np.random.default_rng(0)
    values, matrix = rng.normal(size=30), rng.random((30, 30))
    matrix = matrix + matrix.T
    ones = np.ones((1, 30))
    assert mean_replicates(values, ones)[0] == pytest.approx(values.mean())
    off_diagonal = (matrix.sum() - np.trace(matrix)) / (30 * 29)
    assert pair_mean_replicates(matrix, ones)[0] == pytest.approx(off_diagonal)


def test_kid_replicate_of_the_undisturbed_draw_is_the_unbiased_kid_and_clean_fids():
    rng = np.random.default_rng(1)
    fake, real = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.4
    bootstrap = KidBootstrap(real, 40, rounds=3, seed=0)
    bootstrap.counts_fake[:], bootstrap.counts_real[:] = 1.0, 1.0
    bootstrap.real_term = pair_mean_replicates(bootstrap.k_real, bootstrap.counts_real)
    assert bootstrap.replicates(fake) == pytest.approx(np.full(3, unbiased_kid(fake, real)))
    assert kid_from_features(fake, real, num_subsets=3, subset_size=40) == pytest.approx(unbiased_kid(fake, real))


def test_pairs_of_one_sample_drawn_twice_are_left_out():
    """Counting a sample paired with its own copy would add the kernel's diagonal, which the estimate never has."""
    matrix = np.array([[100.0, 1.0], [1.0, 100.0]])
    twice_first = np.array([[2.0, 0.0]])  # a round that drew sample 0 twice: no pair of distinct samples
    assert np.isnan(pair_mean_replicates(matrix, twice_first)[0])
    assert pair_mean_replicates(matrix, np.array([[2.0, 1.0]]))[0] == pytest.approx(1.0)


def test_mean_interval_covers_the_true_mean_at_about_the_stated_rate():
    rng = np.random.default_rng(2)
    trials = 300
    covered = sum(lo <= 1.0 <= hi for lo, hi in (percentile_interval(mean_replicates(rng.normal(1.0, 2.0, 50), resample_counts(50, 500, rng))) for _ in range(trials)))
    assert 0.90 <= covered / trials <= 0.99


def test_kid_interval_covers_the_population_value_at_about_the_stated_rate():
    rng = np.random.default_rng(3)
    shift = 0.5
    true = np.mean([unbiased_kid(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8)) + shift) for _ in range(2)])
    trials = 120
    covered = 0
    for t in range(trials):
        fake, real = rng.normal(size=(100, 8)), rng.normal(size=(100, 8)) + shift
        low, high = percentile_interval(KidBootstrap(real, 100, rounds=300, seed=t).replicates(fake))
        covered += low <= true <= high
    # 108 of these 120 trials cover (percentile intervals of a skewed statistic run a little short of 95 %).
    assert 0.85 <= covered / trials <= 0.99


def test_shared_draws_make_the_gap_of_the_ideal_exactly_one():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(60, 5))
    source, ideal = rng.normal(size=(60, 5)) + 1.0, rng.normal(size=(60, 5))
    bootstrap = KidBootstrap(real, 60, rounds=200, seed=0)
    s, i = bootstrap.replicates(source), bootstrap.replicates(ideal)
    assert np.allclose(gap_closed(s, i, i), 1.0) and np.allclose(gap_closed(s, s, i), 0.0)
    low, high = percentile_interval(gap_closed(s, 0.5 * (s + i), i))
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_large_sets_are_bootstrapped_through_a_subset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("fsg_ray.metrics.intervals.MAX_SET", 50)
    rng = np.random.default_rng(5)
    bootstrap = KidBootstrap(rng.normal(size=(80, 4)), 70, rounds=10, seed=0)
    assert bootstrap.real.shape == (50, 4) and len(bootstrap.fake_rows) == 50 and bootstrap.replicates(rng.normal(size=(70, 4))).shape == (10,)
