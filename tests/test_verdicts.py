"""Verdicts (analysis.verdicts) against values computed by hand from the corrected-variance formulas."""
import math

import pytest

from analysis.verdicts import EQUIVALENT, HELPS, HURTS, INCONCLUSIVE, decide, decide_family, repeats_needed

N_TRAIN, N_TEST = 80.0, 20.0  # 5 folds: n_test / n_train = 0.25


def _hand_tost(diffs, alpha=0.05):
    """The (1 - 2 alpha) corrected interval, written out: mean -/+ t(1-alpha, J-1) sqrt(1/J + 1/4) sd."""
    j = len(diffs)
    mean = sum(diffs) / j
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (j - 1))
    t95 = {4: 2.131846786, 9: 1.833112933, 14: 1.761310136}[j - 1]
    half = t95 * math.sqrt(1 / j + 0.25) * sd
    return mean - half, mean + half


def test_equivalent_when_the_tost_interval_is_inside_delta():
    diffs = [0.001, -0.001, 0.002, 0.0, -0.002]
    v = decide(diffs, N_TRAIN, N_TEST, p_holm=0.9, delta=0.02, folds=5)
    low, high = _hand_tost(diffs)
    assert v.word == EQUIVALENT
    assert v.tost_low == pytest.approx(low, abs=1e-9) and v.tost_high == pytest.approx(high, abs=1e-9)
    assert "equivalent within ±0.02" in v.sentence()


@pytest.mark.parametrize("sign, word", [(1, HELPS), (-1, HURTS)])
def test_helps_or_hurts_by_the_holm_p_and_the_sign(sign, word):
    diffs = [sign * d for d in (0.05, 0.06, 0.055, 0.065, 0.05)]
    v = decide(diffs, N_TRAIN, N_TEST, p_holm=0.001, delta=0.02, folds=5)
    assert v.word == word and v.repeats_needed is None
    # The same differences with a Holm p above alpha are not called (the family decides).
    assert decide(diffs, N_TRAIN, N_TEST, p_holm=0.2, delta=0.02, folds=5).word == INCONCLUSIVE


def test_inconclusive_says_how_many_repeats_would_settle_it():
    # mean 0.01, sd 0.01: J = 10 is not enough for equivalence (0.0208 > 0.02), J = 15 is (0.0199 < 0.02).
    diffs = [0.0, 0.02, 0.01, 0.0, 0.02]
    mean, sd = 0.01, 0.01
    v = decide(diffs, N_TRAIN, N_TEST, p_holm=0.3, delta=0.02, folds=5)
    assert v.word == INCONCLUSIVE and v.repeats_needed == 3
    assert "about 3 CV repeats" in v.sentence()
    assert repeats_needed(mean, sd, 5, N_TRAIN, N_TEST, 0.02) == 3


def test_no_number_of_repeats_when_the_corrected_variance_floor_is_too_wide():
    # sd 0.0365: the floor sqrt(0.25) sd = 0.018 keeps both the test and the TOST from ever settling.
    v = decide([0.05, -0.04, 0.03, -0.02, 0.01], N_TRAIN, N_TEST, p_holm=0.8, delta=0.02, folds=5)
    assert v.word == INCONCLUSIVE and v.repeats_needed is None
    assert "would not settle it" in v.sentence()


def test_the_family_is_holm_adjusted():
    family = {"real+50": [0.05, 0.06, 0.055, 0.065, 0.05], "real+100": [0.01, -0.02, 0.03, 0.0, 0.005]}
    verdicts = decide_family(family, N_TRAIN, N_TEST, delta=0.02, folds=5)
    assert verdicts["real+50"].word == HELPS
    assert verdicts["real+50"].p_holm == pytest.approx(min(1.0, 2 * verdicts["real+50"].p))
    assert verdicts["real+100"].p_holm >= verdicts["real+100"].p
