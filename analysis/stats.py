"""Metrics per fold, summaries over folds, and the paired comparison against `real`.

The Nadeau-Bengio corrected resampled t-test (Machine Learning 52, 2003): the
k-fold training sets overlap, so fold scores are correlated and the plain
paired t-test is far too optimistic. The correction inflates the variance of
the mean difference from var/J to (1/J + n_test/n_train) * var, with J the
number of (repeat, fold) pairs, and uses a t distribution with J - 1 degrees of
freedom. `corrected_interval` is the confidence interval from the same variance
and t quantile, so the interval excludes 0 exactly when p < 1 - level.

Several mixes are compared with `real` on the same folds; `holm` adjusts their
p-values (Holm-Bonferroni step-down) so that the chance of any false "did improve"
stays at most alpha.

Macro averages when a class is absent from a fold's truth (small data, grouped
folds): precision, recall and F1 are averaged over the classes *present* in the
fold's test labels. An absent class has no recall (0 of 0), and counting it as 0
would punish every mix for the split, not for its predictions. Predictions of an
absent class still count: they are errors of the true class's recall. Balanced
accuracy (scikit-learn) follows the same rule. The absent class's own per-class
metrics are None for that fold, and its mean over folds is over the folds where it
is present.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1"]
# Version of how fold metrics are computed; part of every CV fingerprint, so results saved under an older rule
# are recomputed, not reused. 2: macro averages over the classes present in the fold's truth.
METRICS_VERSION = 2
LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Metrics of one test fold. y_true, y_pred: (n,) class indices into `classes`.

    precision/recall/f1 are macro averages over the classes present in y_true (module
    docstring); `absent` lists the classes with no test image in this fold.
    """
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = s > 0
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": the rule above, on purpose
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "precision": float(np.mean(p[present])),
        "recall": float(np.mean(r[present])),
        "f1": float(np.mean(f[present])),
        "absent": [c for i, c in enumerate(classes) if not present[i]],
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} if present[i]
            else {"precision": None, "recall": None, "f1": None, "support": 0}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


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


def wilcoxon_floor(n_pairs: int) -> float:
    """Smallest two-sided p-value a Wilcoxon signed-rank test can give with n pairs: 2 / 2^n (0.0625 for 5)."""
    return 2.0 / 2**n_pairs


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


def paired_vs_real(runs: dict, real_runs: dict, metric: str, n_train: float, n_test: float) -> dict:
    """A mix against `real` on one metric, over the folds both have: runs, real_runs: fold -> run with run["metrics"].

    Returns diffs (J,), diff_mean, diff_std (ddof 1) and the corrected t-test's t and two-sided p.
    """
    common = [k for k in sorted(runs) if k in real_runs]
    diffs = [runs[k]["metrics"][metric] - real_runs[k]["metrics"][metric] for k in common]
    t, p = corrected_ttest(diffs, n_train, n_test)
    mean, std = mean_std(diffs)
    return {"diffs": diffs, "diff_mean": mean, "diff_std": std, "t": t, "p": p}
