"""Metrics per fold, summaries over folds, and the paired comparison against `real`.

The Nadeau-Bengio corrected resampled t-test (Machine Learning 52, 2003): the
k-fold training sets overlap, so fold scores are correlated and the plain
paired t-test is far too optimistic. The correction inflates the variance of
the mean difference from var/J to (1/J + n_test/n_train) * var, with J the
number of (repeat, fold) pairs, and uses a t distribution with J - 1 degrees of
freedom.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1"]
LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Metrics of one test fold. y_true, y_pred: (n,) class indices into `classes`.

    precision/recall/f1 are macro averages (each class counts equally).
    """
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "precision": float(np.mean(p)),
        "recall": float(np.mean(r)),
        "f1": float(np.mean(f)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


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
    t = mean / math.sqrt((1.0 / j + n_test / n_train) * var)
    p = 2.0 * sps.t.sf(abs(t), df=j - 1)
    return float(t), float(p)


def wilcoxon_floor(n_pairs: int) -> float:
    """Smallest two-sided p-value a Wilcoxon signed-rank test can give with n pairs: 2 / 2^n (0.0625 for 5)."""
    return 2.0 / 2**n_pairs


def critical_difference(std_diff: float, j: int, n_train: float, n_test: float, alpha: float = 0.05) -> float:
    """Smallest mean difference the corrected t-test would call significant at `alpha`, given the spread."""
    if j < 2 or not np.isfinite(std_diff):
        return float("nan")
    tcrit = sps.t.ppf(1 - alpha / 2, df=j - 1)
    return float(tcrit * math.sqrt((1.0 / j + n_test / n_train)) * std_diff)
