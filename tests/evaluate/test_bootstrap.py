"""Percentile bootstrap: deterministic, covers the estimate, narrows with more data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctscribe.evaluate.bootstrap import bootstrap_ci, bootstrap_distribution


def test_deterministic_given_seed() -> None:
    values = np.random.default_rng(0).normal(size=200)
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, seed=4) != bootstrap_ci(values, seed=5)
    np.testing.assert_array_equal(
        bootstrap_distribution(values, n_resamples=50, seed=1),
        bootstrap_distribution(values, n_resamples=50, seed=1),
    )


def test_interval_contains_the_mean_of_a_normal_sample() -> None:
    values = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    low, high = bootstrap_ci(values, n_resamples=2000, seed=0)
    assert low < values.mean() < high
    # About mean ± 1.96 sigma / sqrt(n) = ± 0.196.
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / 20, rel=0.15)


def test_width_shrinks_with_n() -> None:
    rng = np.random.default_rng(2)
    small = bootstrap_ci(rng.normal(size=100), n_resamples=300, seed=0)
    large = bootstrap_ci(rng.normal(size=10_000), n_resamples=300, seed=0)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5


def test_ratio_of_totals_statistic() -> None:
    # Per-sample (numerator, denominator), e.g. tp and predicted counts: the statistic is recomputed
    # from resampled totals, not averaged per sample.
    rng = np.random.default_rng(3)
    den = rng.integers(1, 5, size=300).astype(float)
    num = rng.binomial(den.astype(int), 0.3).astype(float)
    data = np.stack([num, den], axis=1)

    def ratio(totals: np.ndarray) -> np.ndarray:
        return totals[:, 0] / totals[:, 1]

    low, high = bootstrap_ci(data, ratio, seed=0)
    assert low < num.sum() / den.sum() < high
    # A paired difference of identical systems is exactly zero in every resample.
    paired = np.stack([num, num], axis=1)
    assert bootstrap_ci(paired, lambda t: t[:, 0] - t[:, 1]) == (0.0, 0.0)


def test_nan_marks_not_applicable() -> None:
    values = np.array([1.0, 0.0, np.nan, 1.0, np.nan, 1.0] * 20)
    low, high = bootstrap_ci(values, seed=0)
    assert low <= np.nanmean(values) <= high and not math.isnan(low)
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan, np.nan]))
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_many_samples_in_blocks() -> None:
    values = np.random.default_rng(4).random(100_000)
    dist = bootstrap_distribution(values, n_resamples=100, seed=0)
    assert dist.shape == (100,) and np.all(np.abs(dist - values.mean()) < 0.01)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones((5, 2)))  # 2-D needs a statistic
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_resamples=0)
