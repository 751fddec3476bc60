"""Statistics of the blind test: exact binomial figures, signal detection, agreement, sample size.

Library calls where the field has them: scipy's `binomtest` (exact p and Clopper-Pearson
interval), scikit-learn's Cohen's kappa, statsmodels' Fleiss' kappa; each is tested against
hand-computed values in tests/test_blind.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.stats import binom, binomtest

from .names import ALPHA, POWER, REAL, SKIP, SYNTHETIC, TARGET_ACCURACY


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion k / n; (nan, nan) when n = 0.

    scipy's `binomtest(k, n).proportion_ci(method="exact")`.
    """
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def binom_p_greater(k: int, n: int, p0: float = 0.5) -> float:
    """One-sided exact binomial p: P(X >= k) for X ~ Binomial(n, p0) (scipy's binomtest); nan when n = 0."""
    if n <= 0:
        return float("nan")
    return float(binomtest(int(k), int(n), p0, alternative="greater").pvalue)


def loglinear_rate(count: int, trials: int) -> float:
    """Hautus (1995) log-linear corrected rate (count + 0.5) / (trials + 1): never 0 or 1."""
    return (count + 0.5) / (trials + 1)


def dprime(hits: int, n_signal: int, false_alarms: int, n_noise: int) -> float:
    """Signal-detection sensitivity d' = z(H) - z(F), rates log-linear corrected; nan without trials of a kind."""
    if n_signal <= 0 or n_noise <= 0:
        return float("nan")
    z = NormalDist().inv_cdf
    return z(loglinear_rate(hits, n_signal)) - z(loglinear_rate(false_alarms, n_noise))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two raters' calls on the same items (scikit-learn); nan for no items or one shared label."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("cohen_kappa needs two sequences of equal length")
    if not a or len(set(a) | set(b)) < 2:
        return float("nan")
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(a, b))


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa of a (items, categories) matrix of how many raters put each item in each category (statsmodels).

    Every item needs the same number of raters m >= 2. nan for no items or when chance agreement is 1.
    """
    x = np.asarray(counts, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        return float("nan")
    m = x.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings for every item")
    p_j = x.sum(axis=0) / x.sum()
    if float(np.sum(p_j * p_j)) == 1:
        return float("nan")
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

    return float(sm_fleiss_kappa(x, method="fleiss"))


def critical_count(n: int, alpha: float = ALPHA) -> int:
    """Smallest c with P(X >= c | n, 0.5) <= alpha: the one-sided exact test rejects chance from c correct calls on."""
    c = int(binom.isf(alpha, n, 0.5))  # a candidate near the boundary; step to the exact smallest c
    while c > 0 and binom.sf(c - 2, n, 0.5) <= alpha:
        c -= 1
    while binom.sf(c - 1, n, 0.5) > alpha:
        c += 1
    return c


def exact_power(n: int, accuracy: float = TARGET_ACCURACY, alpha: float = ALPHA) -> float:
    """Power of the one-sided exact binomial test at `alpha` with n calls against a true `accuracy`."""
    if n <= 0:
        return 0.0
    return float(binom.sf(critical_count(n, alpha) - 1, n, accuracy))


def calls_needed(accuracy: float = TARGET_ACCURACY, alpha: float = ALPHA, power: float = POWER) -> int:
    """Smallest n from which on (every n' >= n) the exact one-sided test has power >= `power` at `accuracy`.

    Scans up to twice the normal-approximation size plus a margin, past which the saw-tooth no longer dips.
    """
    z = NormalDist().inv_cdf
    approx = ((z(1 - alpha) * 0.5 + z(power) * math.sqrt(accuracy * (1 - accuracy))) / (accuracy - 0.5)) ** 2
    top = int(2 * approx) + 50
    ok = [exact_power(n, accuracy, alpha) >= power for n in range(1, top + 1)]
    if not ok[-1]:
        raise ValueError("calls_needed: scan range too small")
    n = top
    while n > 1 and ok[n - 2]:
        n -= 1
    return n


def detectable_accuracy(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true accuracy the exact test detects with `power` from n calls (bisection; power rises with accuracy)."""
    if n <= 0:
        return float("nan")
    lo, hi = 0.5, 1.0
    if exact_power(n, hi, alpha) < power:
        return float("nan")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if exact_power(n, mid, alpha) >= power else (mid, hi)
    return hi


@dataclass
class Score:
    """Counts of one set of calls and the statistics derived from them."""

    n_real: int = 0  # real images called (not skipped)
    n_synthetic: int = 0
    real_correct: int = 0  # real called real
    synthetic_correct: int = 0  # synthetic called synthetic (hits)
    skipped: int = 0

    def add(self, truth: str, call: str) -> None:
        if call == SKIP:
            self.skipped += 1
        elif truth == REAL:
            self.n_real += 1
            self.real_correct += call == REAL
        else:
            self.n_synthetic += 1
            self.synthetic_correct += call == SYNTHETIC

    @property
    def calls(self) -> int:
        return self.n_real + self.n_synthetic

    @property
    def correct(self) -> int:
        return self.real_correct + self.synthetic_correct

    def stats(self) -> dict:
        n, k = self.calls, self.correct
        lo, hi = clopper_pearson(k, n)
        return {
            "calls": n, "correct": k, "skipped": self.skipped,
            "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "p": binom_p_greater(k, n),
            "sensitivity": self.synthetic_correct / self.n_synthetic if self.n_synthetic else float("nan"),
            "specificity": self.real_correct / self.n_real if self.n_real else float("nan"),
            "dprime": dprime(self.synthetic_correct, self.n_synthetic, self.n_real - self.real_correct, self.n_real),
        }


