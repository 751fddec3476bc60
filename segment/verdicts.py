"""A verdict per mix against `real`: helps, hurts, equivalent, or inconclusive (and the repeats that would settle it).

On the primary metric, with J paired fold differences, their mean d, the Nadeau-Bengio
corrected interval [lo, hi] (95 %) and the Holm-adjusted p over the family of mixes:
- helps:       d > 0 and Holm p < alpha;
- hurts:       d < 0 and Holm p < alpha;
- equivalent:  the whole interval lies within +-margin (no difference that matters);
- inconclusive otherwise. It then says how many CV repeats (of k folds each) would make the
  observed difference significant, or the interval narrow enough to show equivalence, if the
  fold differences kept their spread: the smallest R with t(RK-1) * se(RK) < |d| or
  |d| + t(RK-1) * se(RK) < margin. The corrected standard error never falls below
  sqrt(n_test / n_train) * sd, so some questions no number of repeats can settle (None).

TODO(lead): switch to `analysis.verdicts` once it exists on main; this is a stand-in of the
same rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from .stats import corrected_se

ALPHA = 0.05
LEVEL = 0.95
MAX_REPEATS = 100


@dataclass
class Verdict:
    word: str  # helps | hurts | equivalent | inconclusive | untested
    repeats_needed: int | None = None  # inconclusive: CV repeats that would settle it; None: not reachable

    def text(self) -> str:
        if self.word != "inconclusive":
            return self.word
        if self.repeats_needed is None:
            return "inconclusive (more repeats would not settle it)"
        return f"inconclusive (about {self.repeats_needed} repeats in all needed)"


def verdict(diff: float, std: float, j: int, lo: float, hi: float, p_holm: float, margin: float,
            n_train: float, n_test: float, k_folds: int, family: int = 1) -> Verdict:
    """The verdict for one mix (see the module docstring); `untested` with fewer than 2 folds."""
    if j < 2 or not all(map(math.isfinite, (diff, lo, hi))):
        return Verdict("untested")
    if math.isfinite(p_holm) and p_holm < ALPHA:
        return Verdict("helps" if diff > 0 else "hurts")
    if -margin < lo and hi < margin:
        return Verdict("equivalent")
    done = max(1, j // max(1, k_folds))
    return Verdict("inconclusive", repeats_needed(diff, std, margin, n_train, n_test, k_folds, family, done))


def repeats_needed(diff: float, std: float, margin: float, n_train: float, n_test: float, k_folds: int,
                   family: int = 1, done: int = 1) -> int | None:
    """Smallest number of CV repeats in all (more than `done`) that would settle the question at this spread, or None."""
    for r in range(done + 1, MAX_REPEATS + 1):
        j = r * k_folds
        se = corrected_se(std, j, n_train, n_test)
        significant = sps.t.ppf(1 - ALPHA / (2 * max(1, family)), df=j - 1) * se < abs(diff)
        equivalent = abs(diff) + sps.t.ppf(0.5 + LEVEL / 2, df=j - 1) * se < margin
        if significant or equivalent:
            return r
    return None
