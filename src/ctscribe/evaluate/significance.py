"""Paired significance: is one system's score on the same test samples really different from another's?

Two systems described the same images (the fine-tuned model and its base; two prediction files; the
model on its own images and on swapped ones). For each metric, as :class:`Columns` with one row per
sample in the same order for both systems:

- ``difference``: the metric of A minus the metric of B, each on all the rows;
- ``ci``: the percentile bootstrap interval of that difference, both systems resampled with the same
  draws (:func:`ctscribe.evaluate.bootstrap.bootstrap_ci` on their columns side by side);
- ``p_value``: a two-sided paired approximate-randomisation test (``scipy.stats.permutation_test``,
  ``permutation_type="samples"``): under the null hypothesis that the systems are exchangeable, each
  sample's two outputs are swapped with probability 1/2 and the difference recomputed. Because each
  metric is a statistic of column totals, a corpus metric is recomputed per permutation from the
  swapped sufficient statistics (corpus BLEU from n-gram counts, micro F1 from tp/fp/fn), not
  averaged from sentence values. With few samples scipy enumerates every swap (an exact test).

Identical outputs give a difference of 0 in every permutation and resample: p = 1, interval [0, 0].
A metric that neither system can be scored on (no reference states a side) gives NaN (null in JSON).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import permutation_test

from ctscribe.evaluate.bootstrap import Columns, bootstrap_ci, json_number

PERMUTATIONS = 9999  # p resolves to 1e-4: well below 0.05 and 0.01 where it matters
ALTERNATIVE = "two-sided"


def _difference(a: Columns, b: Columns, x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """Metric(A) - metric(B) for rows along ``axis`` of ``x`` and ``y`` (scipy moves them last)."""
    totals_a, totals_b = x.sum(axis=axis), y.sum(axis=axis)  # (..., k)
    shape = totals_a.shape[:-1]
    k = totals_a.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = a.statistic(totals_a.reshape(-1, k)) - b.statistic(totals_b.reshape(-1, k))
    return diff.reshape(shape)


def paired_difference(
    a: Columns,
    b: Columns,
    *,
    n_resamples: int = 1000,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """``{"difference": d, "ci": [lo, hi], "p_value": p}`` of metric(A) - metric(B) on paired rows."""
    if a.values.shape != b.values.shape:
        raise ValueError(f"paired columns differ in shape: {a.values.shape} vs {b.values.shape}")
    difference = a.score() - b.score()
    if a.values.shape[0] == 0 or not np.isfinite(difference):
        return {"difference": json_number(difference), "ci": [None, None], "p_value": None}
    k = a.values.shape[1]
    side_by_side = np.hstack([a.values, b.values])
    low, high = bootstrap_ci(
        side_by_side,
        lambda t: a.statistic(t[:, :k]) - b.statistic(t[:, k:]),
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
    )
    test = permutation_test(
        (a.values, b.values),
        lambda x, y, axis: _difference(a, b, x, y, axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=permutations,
        alternative=ALTERNATIVE,
        axis=0,
        random_state=seed,
    )
    return {
        "difference": json_number(difference),
        "ci": [json_number(low), json_number(high)],
        "p_value": json_number(float(test.pvalue)),
    }


def compare_columns(
    a: Mapping[tuple[str, ...], Columns], b: Mapping[tuple[str, ...], Columns], *, seed: int = 0
) -> dict:
    """metrics.json's comparison block: every metric both systems have, nested as in a metrics block
    (``("findings", "region_acc")`` under ``"findings"``), each :func:`paired_difference`."""
    block: dict = {}
    for path in [path for path in a if path in b]:
        node = block
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = paired_difference(a[path], b[path], seed=seed)
    return block
