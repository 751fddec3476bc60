"""Each comparison against `real` ends in a verdict: helps, hurts, equivalent within ±δ, or inconclusive.

The rule, on the Nadeau-Bengio corrected variance of the J paired per-fold differences
(`analysis.stats`; se = sqrt(1/J + n_test/n_train) * sd):

- **equivalent within ±δ** when the two one-sided tests (TOST, Schuirmann 1987) both reject at
  `alpha`: the (1 - 2 alpha) corrected interval lies inside (-δ, +δ). This comes first: a
  difference smaller than δ is "equivalent" even when it is also statistically non-zero.
- **helps** / **hurts** when the Holm-adjusted corrected t-test p is below `alpha` (the family is
  every mix compared with `real` in one study), by the sign of the mean difference.
- **inconclusive** otherwise. Then `repeats_needed` says how many CV repeats (each of `folds`
  folds) would settle it if the mean and spread stayed as observed; None when no number would:
  the corrected variance never falls below (n_test/n_train) * sd^2, however many repeats.

δ is in the metric's own units (macro F1 by default: `classify.delta`, default 0.02).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from analysis.stats import corrected_interval, corrected_se, corrected_ttest, holm

HELPS, HURTS, EQUIVALENT, INCONCLUSIVE = "helps", "hurts", "equivalent", "inconclusive"
MAX_REPEATS = 100  # beyond this many repeats, "not with more repeats" is the honest answer


@dataclass(frozen=True)
class Verdict:
    """The verdict of one mix against `real` on one metric; differences are mix - real."""

    word: str  # helps | hurts | equivalent | inconclusive
    mean_diff: float
    ci_low: float  # (1 - alpha) corrected interval
    ci_high: float
    tost_low: float  # (1 - 2 alpha) corrected interval, the TOST's
    tost_high: float
    p: float  # corrected t-test, two-sided
    p_holm: float
    delta: float
    alpha: float
    pairs: int  # J
    repeats_needed: int | None  # only for inconclusive; None: no number of repeats would do

    def sentence(self, metric: str = "F1") -> str:
        """One line a biologist can read, e.g. 'helps: F1 +0.031 (95 % CI +0.012 to +0.050, Holm p = 0.004)'."""
        level = round(100 * (1 - self.alpha))
        ci = f"{level} % CI {self.ci_low:+.3f} to {self.ci_high:+.3f}"
        core = f"{metric} {self.mean_diff:+.3f} ({ci}, Holm p = {self.p_holm:.3g})"
        if self.word == EQUIVALENT:
            return f"equivalent within ±{self.delta:g}: {core}"
        if self.word in (HELPS, HURTS):
            return f"{self.word}: {core}"
        if self.repeats_needed is None:
            return (f"inconclusive: {core}; more CV repeats would not settle it at this spread "
                    f"(a larger data set, or a larger δ than {self.delta:g}, would)")
        return f"inconclusive: {core}; about {self.repeats_needed} CV repeats would settle it at this spread"


def _settles(mean: float, sd: float, j: int, n_train: float, n_test: float, delta: float, alpha: float) -> bool:
    """Would J pairs with this mean and spread end in helps/hurts (unadjusted) or equivalent?"""
    se = corrected_se(sd, j, n_train, n_test)
    if se == 0:
        return True
    significant = abs(mean) > sps.t.ppf(1 - alpha / 2, df=j - 1) * se
    equivalent = abs(mean) + sps.t.ppf(1 - alpha, df=j - 1) * se < delta
    return bool(significant or equivalent)


def repeats_needed(mean: float, sd: float, folds: int, n_train: float, n_test: float, delta: float,
                   alpha: float = 0.05) -> int | None:
    """Smallest number of CV repeats (J = repeats * folds pairs) that settles the comparison, or None.

    Assumes the observed mean and sd stay as they are; ignores the Holm adjustment (a lower bound).
    """
    if not (np.isfinite(mean) and np.isfinite(sd)) or folds < 1:
        return None
    for repeats in range(1, MAX_REPEATS + 1):
        j = repeats * folds
        if j >= 2 and _settles(mean, sd, j, n_train, n_test, delta, alpha):
            return repeats
    return None


def decide(diffs, n_train: float, n_test: float, *, p_holm: float, delta: float, folds: int,
           alpha: float = 0.05) -> Verdict:
    """The verdict for one mix. diffs: (J,) metric(mix) - metric(real) per (repeat, fold)."""
    d = np.asarray(diffs, dtype=float)
    j = int(d.size)
    mean = float(d.mean()) if j else float("nan")
    sd = float(d.std(ddof=1)) if j > 1 else float("nan")
    _, p = corrected_ttest(d, n_train, n_test)
    ci = corrected_interval(mean, sd, j, n_train, n_test, level=1 - alpha)
    tost = corrected_interval(mean, sd, j, n_train, n_test, level=1 - 2 * alpha)
    word, needed = INCONCLUSIVE, None
    if j >= 2 and -delta < tost[0] and tost[1] < delta:
        word = EQUIVALENT
    elif j >= 2 and p_holm < alpha:
        word = HELPS if mean > 0 else HURTS
    else:
        needed = repeats_needed(mean, sd, folds, n_train, n_test, delta, alpha)
    return Verdict(word, mean, ci[0], ci[1], tost[0], tost[1], float(p), float(p_holm), float(delta), float(alpha),
                   j, needed)


def decide_family(diffs_by_mix: dict[str, list[float]], n_train: float, n_test: float, *, delta: float, folds: int,
                  alpha: float = 0.05) -> dict[str, Verdict]:
    """Verdicts for every mix compared with `real` in one study: one Holm family over their corrected p-values."""
    names = list(diffs_by_mix)
    pvalues = [corrected_ttest(diffs_by_mix[n], n_train, n_test)[1] for n in names]
    adjusted = holm(pvalues)
    return {n: decide(diffs_by_mix[n], n_train, n_test, p_holm=1.0 if math.isnan(a) else a, delta=delta, folds=folds,
                      alpha=alpha) for n, a in zip(names, adjusted)}
