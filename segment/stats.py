"""The paired comparison against `real`: Nadeau-Bengio corrected resampled t-test, its interval, Holm.

TODO(lead): a verbatim copy of classify.stats (mean_std, corrected_se, corrected_ttest,
corrected_interval, critical_difference, holm); switch to `analysis.stats` once it exists on main
and delete this file. The Nadeau-Bengio correction (Machine Learning 52, 2003): k-fold training
sets overlap, so the variance of the mean difference is (1/J + n_test/n_train) * var, with J the
number of (repeat, fold) pairs and a t distribution with J - 1 degrees of freedom.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the defined values.

    None or nan (a per-class metric of a fold without that class) are left out; nan, nan if none is left.
    """
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def corrected_se(std_diff: float, j: int, n_train: float, n_test: float) -> float:
    """Nadeau-Bengio standard error of a mean of J paired differences: sqrt((1/J + n_test/n_train)) * std (ddof 1)."""
    return math.sqrt(1.0 / j + n_test / n_train) * std_diff


def corrected_ttest(diffs, n_train: float, n_test: float) -> tuple[float, float]:
    """Nadeau-Bengio corrected resampled t-test of paired per-fold differences.

    diffs: (J,) metric(mix) - metric(real) per (repeat, fold); n_train, n_test:
    mean training and test set sizes. Returns (t, two-sided p); p = 1 when all
    differences are zero, nan with fewer than 2 folds.
    """
    d = np.asarray(diffs, dtype=float)
    j = d.size
    if j < 2:
        return float("nan"), float("nan")
    mean, var = d.mean(), d.var(ddof=1)
    if var == 0:
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / corrected_se(math.sqrt(var), j, n_train, n_test)
    p = 2.0 * sps.t.sf(abs(t), df=j - 1)
    return float(t), float(p)


def corrected_interval(mean_diff: float, std_diff: float, j: int, n_train: float, n_test: float,
                       level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the mean paired difference from the corrected test's variance and t(J-1) quantile.

    mean_diff, std_diff (ddof 1): of the J per-fold differences. (nan, nan) with fewer than 2 folds.
    """
    if j < 2 or not np.isfinite(std_diff):
        return float("nan"), float("nan")
    half = sps.t.ppf(0.5 + level / 2, df=j - 1) * corrected_se(std_diff, j, n_train, n_test)
    return float(mean_diff - half), float(mean_diff + half)


def critical_difference(std_diff: float, j: int, n_train: float, n_test: float, alpha: float = 0.05) -> float:
    """Smallest mean difference the corrected t-test would call significant at `alpha`, given the spread."""
    if j < 2 or not np.isfinite(std_diff):
        return float("nan")
    return float(sps.t.ppf(1 - alpha / 2, df=j - 1) * corrected_se(std_diff, j, n_train, n_test))


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; nan stays nan and does not count.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over k <= i of min(1, (m - k + 1) p_(k)).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
