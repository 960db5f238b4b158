"""Percentile bootstrap confidence intervals, vectorised with numpy and deterministic by seed.

Every metric ctscribe reports is a function of *column totals* of per-sample values:

- a mean (ROUGE-L, CIDEr, an accuracy) is ``total / n``; a mean that skips samples where the metric
  does not apply (laterality accuracy over references that state a side) is ``sum(value * valid) /
  sum(valid)``, which is what the default statistic does with NaN entries;
- corpus BLEU is a function of the totals of sacrebleu's sufficient statistics (lengths and n-gram
  match counts), not the mean of sentence BLEU;
- micro F1 is ``2 tp / (2 tp + fp + fn)`` over the totals of tp, fp and fn.

So one resample is a vector of counts (how often each sample was drawn) and its statistic is computed
from ``counts @ values``: ``values`` has one row per sample and one column per sufficient statistic,
and ``statistic`` maps the resampled totals, shape ``(n_resamples, k)``, to one value per resample.
Recomputing a ratio from resampled totals is what makes the interval right for corpus-level metrics;
averaging per-sample ratios would bootstrap a different number.

A metric in this form is a :class:`Columns`: its per-sample rows and its statistic. A row of zeros adds
nothing to any total, so a sample a metric does not count (a NaN of a mean, a reference without a
findings sentence) can stay in the table as zeros and every metric of an evaluation has one row per
scored sample, in the same order: what paired comparisons need (:mod:`ctscribe.evaluate.significance`
puts both systems' columns side by side and lets the statistic return the difference, so both are
resampled with the same draws).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]

# Resamples are drawn in blocks so the (block, n) count matrix stays around 32 MB.
_BLOCK_CELLS = 1 << 22


def _nan_mean_columns(values: np.ndarray) -> tuple[np.ndarray, Statistic]:
    """Columns (value, valid) and the statistic sum(value) / sum(valid): a mean that skips NaN."""
    valid = np.isfinite(values)
    columns = np.stack([np.where(valid, values, 0.0), valid.astype(float)], axis=1)

    def mean(totals: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                totals[:, 1] > 0, totals[:, 0] / np.where(totals[:, 1] > 0, totals[:, 1], 1), np.nan
            )

    return columns, mean


def _prepare(
    values: np.ndarray | Sequence[float] | Sequence[np.ndarray], statistic: Statistic | None
) -> tuple[np.ndarray, Statistic]:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        if statistic is None:
            return _nan_mean_columns(array)
        return array[:, None], statistic
    if array.ndim != 2:
        raise ValueError(f"values must be 1-D (n,) or 2-D (n, k); got shape {array.shape}")
    if statistic is None:
        raise ValueError("a 2-D values array needs a statistic that maps column totals to a value")
    return array, statistic


@dataclass(frozen=True, eq=False)
class Columns:
    """A metric as per-sample sufficient statistics, ``values`` of shape ``(n, k)``, and the
    ``statistic`` that maps column totals of shape ``(r, k)`` to the metric, shape ``(r,)``."""

    values: np.ndarray
    statistic: Statistic

    @classmethod
    def of(
        cls, values: np.ndarray | Sequence[float] | Sequence[np.ndarray], statistic: Statistic | None = None
    ) -> Columns:
        """Per-sample values (NaN: not counted) or sufficient statistics with their statistic."""
        return cls(*_prepare(values, statistic))

    def score(self) -> float:
        """The metric on all rows."""
        return float(self.statistic(self.values.sum(axis=0)[None, :])[0])

    def rows(self, index: Sequence[int] | np.ndarray) -> Columns:
        """The same metric on the rows ``index`` (in that order)."""
        return Columns(self.values[np.asarray(index, dtype=int)], self.statistic)

    def ci(self, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
        """Percentile bootstrap interval of the metric (:func:`bootstrap_ci`)."""
        return bootstrap_ci(self.values, self.statistic, n_resamples=n_resamples, seed=seed, alpha=alpha)


def bootstrap_distribution(
    values: np.ndarray | Sequence[float] | Sequence[np.ndarray],
    statistic: Statistic | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """The statistic on ``n_resamples`` resamples (with replacement, same size as the data).

    ``values``: per-sample values, shape ``(n,)``, or per-sample sufficient statistics, shape
    ``(n, k)``. ``statistic``: maps resampled column totals, shape ``(r, k)``, to shape ``(r,)``;
    for 1-D values it defaults to the mean of the finite entries (NaN marks "not applicable").
    Returns shape ``(n_resamples,)``; the same seed and data always give the same array.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    data, stat = _prepare(values, statistic)
    n = data.shape[0]
    if n == 0:
        return np.full(n_resamples, np.nan)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, _BLOCK_CELLS // n))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        # counts[r, i]: how often sample i was drawn in resample r.
        flat = (draws + np.arange(rows)[:, None] * n).ravel()
        counts = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)
        out[start : start + rows] = stat(counts @ data)
    return out


def bootstrap_ci(
    values: np.ndarray | Sequence[float] | Sequence[np.ndarray],
    statistic: Statistic | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` at level ``1 - alpha`` for a statistic.

    Arguments as :func:`bootstrap_distribution`. Resamples where the statistic is undefined (NaN,
    e.g. no sample in it states a side) are left out; ``(nan, nan)`` when there is no data or no
    resample gives a value.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    stats = bootstrap_distribution(values, statistic, n_resamples=n_resamples, seed=seed)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def json_number(value: float) -> float | None:
    """JSON has no NaN: a metric with nothing to count is null."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)
