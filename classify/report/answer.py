"""The report's opening: per LoRA weight, a verdict on whether synthetic images help, with its evidence.

The answer states "did not help" only with evidence (every mix equivalent to `real` within ±δ, or worse);
when the evidence is missing it says the comparison is inconclusive and how many CV repeats would settle it.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from analysis.report import fmt_ci, p_is, scaled_span, verdict_method
from analysis.verdicts import EQUIVALENT, HELPS, HURTS, INCONCLUSIVE, Verdict
from prompts.normalize import reading_line

from ..results import REAL_TREE, CVResults
from .text import ALPHA, LEVEL, METRIC_NAME, repeats_advice, shown_path, tree_title


def verdicts_of(res: CVResults, tree: str | None = None, synthetic: bool = True) -> dict[str, Verdict]:
    """mix -> verdict of the synthetic mixes of `tree` (all trees: None), or of the baselines (synthetic=False)."""
    return {r.mix if tree else f"{r.tree}/{r.mix}": r.verdict for r in res.rows()
            if r.verdict is not None and r.uses_synthetic == synthetic and (tree is None or r.tree == tree)}


def _effect(v: Verdict, family: int) -> str:
    holm = f", Holm-adjusted p {p_is(v.p_holm)}" if family > 1 else ""
    return f"{v.mean_diff:+.3f}, {LEVEL * 100:.0f} % CI {fmt_ci(v.ci_low, v.ci_high)}, corrected p {p_is(v.p)}{holm}, {v.pairs} folds"


def _settle(v: Verdict, current: int) -> str:
    if v.repeats_needed is not None and v.repeats_needed <= current:
        return (f"it reaches p < {v.alpha:g} only before the Holm adjustment: more CV repeats ({repeats_advice(2 * current)}) "
                "or fewer mixes would settle it")
    if v.repeats_needed is None:
        return ("more CV repeats would not settle it at this spread (a larger data set, or a larger "
                f"`classify.delta` than {v.delta:g}, would)")
    return f"about {v.repeats_needed} CV repeats would settle it at this spread ({repeats_advice(v.repeats_needed)})"


def answer_sentence(tree: str, verdicts: dict[str, Verdict], family: int, repeats: int = 1) -> str:
    """The plain-words answer for one LoRA weight (verdicts: that tree's synthetic mixes)."""
    head = f"**{tree_title(tree)}:** adding synthetic images"
    if not verdicts:
        return f"{head}: no answer — the run has no `real` mix to compare with, or no synthetic mix."
    by_diff = sorted(verdicts.items(), key=lambda kv: kv[1].mean_diff, reverse=True)
    if all(v.pairs < 2 for v in verdicts.values()):
        mix, v = by_diff[0]
        return (f"{head} cannot be tested with {v.pairs} fold(s) (best mix {mix}: {v.mean_diff:+.3f} {METRIC_NAME}); "
                "run at least 2 folds.")
    words = {v.word for v in verdicts.values()}
    helps = [(m, v) for m, v in by_diff if v.word == HELPS]
    if helps:
        mix, v = helps[0]
        text = f"{head} **helps**: it improved {METRIC_NAME} (best mix {mix}: {_effect(v, family)})."
    elif INCONCLUSIVE in words:
        mix, v = next((m, v) for m, v in by_diff if v.word == INCONCLUSIVE)
        text = (f"{head} is **inconclusive**: this run cannot say whether it improved {METRIC_NAME} or not (best "
                f"inconclusive mix {mix}: {_effect(v, family)}); {_settle(v, repeats)}.")
    else:
        mix, v = by_diff[0]
        delta = v.delta
        what = "equivalent to `real` within ±" + f"{delta:g}" if words == {EQUIVALENT} else f"equivalent within ±{delta:g} or worse"
        text = (f"{head} **did not help**: every mix is {what} (best mix {mix}: {_effect(v, family)}; "
                f"90 % interval {fmt_ci(v.tost_low, v.tost_high)}).")
    worse = [(m, v) for m, v in reversed(by_diff) if v.word == HURTS]
    if worse:
        text += " Significantly worse (**hurts**): " + "; ".join(
            f"{m} ({v.mean_diff:+.3f}, p {p_is(v.p_holm if family > 1 else v.p)})" for m, v in worse) + "."
    return text


def baseline_answer(verdicts: dict[str, Verdict]) -> str:
    """The answer of a run without synthetic mixes: the best baseline against `real`."""
    if not verdicts:
        return "This run has no synthetic mixes and no baseline to compare with `real`."
    mix, v = max(verdicts.items(), key=lambda kv: kv[1].mean_diff)
    word = "improved" if v.word == HELPS else "did not improve" if v.word in (HURTS, EQUIVALENT) else "may or may not have improved"
    return (f"**No synthetic mixes in this run.** The best baseline against `real`, {mix.split('/')[-1]}, {word} "
            f"{METRIC_NAME} ({_effect(v, len(verdicts))}; verdict: {v.word}).")


def correction_note(verdicts: dict[str, Verdict], what: str = "synthetic mixes") -> str:
    """Which correction the answer's p-values carry, and how verdicts are reached, stated once."""
    m = len(verdicts)
    if m == 0:
        return "Nothing was compared with `real`."
    method = verdict_method(next(iter(verdicts.values())).delta, METRIC_NAME)
    if m == 1:
        return "The answer rests on one comparison: its p-value needs no correction for multiple comparisons. " + method
    trees = sorted({k.split("/")[0] for k in verdicts if "/" in k and not k.startswith(REAL_TREE + "/")})
    weights = f" ({len(trees)} LoRA weight{'s' if len(trees) > 1 else ''})" if trees else ""
    return (f"The answer tests {m} {what} against `real`{weights}; \"improved\" means a positive difference with "
            f"Holm-adjusted p < {ALPHA:g} over all {m}, which keeps the chance of any false \"improved\" at most 5 %. "
            "Intervals are per comparison. p-values in the tables below are per comparison, not adjusted. " + method)


def realism_summary(realism: dict | None, tree: str) -> str | None:
    """One sentence on the realism of a LoRA weight's images, over its classes (None without realism rows)."""
    if not realism or not tree.startswith("w"):
        return None
    rows = [r for r in realism.get("rows", []) if str(r["weight"]) == tree[1:]]
    if not rows:
        return None
    acc = [r["c2st_accuracy"] for r in rows if np.isfinite(r["c2st_accuracy"])]
    copies = sum(r.get("n_copies", 0) for r in rows)
    lo, hi = (f"{min(acc):.2f}", f"{max(acc):.2f}") if acc else ("—", "—")
    prefix, kid = scaled_span([r["kid"] for r in rows])
    return (f"**Realism, {tree_title(tree)}** ({len(rows)} classes): a two-sample classifier told synthetic from real "
            f"with accuracy {lo if lo == hi else f'{lo} to {hi}'} (0.5 = indistinguishable, 1.0 = always told apart); "
            f"KID{' ' + prefix if prefix else ''} {kid} (0 = same distribution); {copies} byte-identical copies of real images.")


def statistics_note(res: CVResults) -> str:
    j = res.n_folds
    ratio = res.n_test_mean / res.n_train_mean
    tcrit = sps.t.ppf(0.975, df=max(1, j - 1))
    text = (
        f"Each mix is compared with `real` on the same {j} folds (paired). p is the two-sided p-value of the "
        f"Nadeau-Bengio corrected resampled t-test (variance factor 1/J + n_test/n_train = 1/{j} + {ratio:.2f}, "
        f"{j - 1} degrees of freedom; |t| must exceed {tcrit:.2f} for p < 0.05); the 95 % interval of a difference is "
        "mean ± that t quantile × the same corrected standard error, so it excludes 0 exactly when p < 0.05. The "
        "correction accounts for the overlap of training sets between folds, which makes the plain paired t-test far too "
        f"optimistic. A Wilcoxon signed-rank test over {j} folds cannot go below p = {res.wilcoxon_min_p:.4g}. "
        "Macro precision, recall and F1 of a fold average over the classes present in that fold's test images."
    )
    if res.repeats == 1:
        text += (
            f" With a single {res.n_splits}-fold run the corrected test has very little power: only a difference "
            "that is large and consistent in every fold reaches significance, so a non-significant p here is not evidence "
            f"of no effect. Repeat the CV ({repeats_advice(5)}) for a test that can detect differences of a few points."
        )
    return text


def setup_text(res: CVResults) -> str:
    s = res.settings
    return (
        f"Data `{shown_path(res.data)}`: {', '.join(f'{c} {n}' for c, n in res.class_counts.items())}. "
        f"{res.n_splits}-fold CV × {res.repeats} repeat(s) ({res.n_folds} folds"
        + (f", grouped by `{res.group_by}`" if res.group_by else "")
        + f"). Classifier: {s.backbone} ({shown_path(s.weights) if s.weights not in ('imagenet', 'none', 'calibrated') else s.weights})"
        f" at {s.image_size} px, frozen base, head trained {s.epochs} "
        f"epochs (Adam {s.learning_rate:g}, batch {s.batch_size}), augmentation {'on' if s.augment else 'off'}"
        + (", class-weighted loss" if s.class_weights else "")
        + (f", minority class subsampled to {s.minority_fraction:g} of the largest" if s.minority_fraction else "")
        + f", feature cache {'on' if s.feature_cache else 'off'}. Seed {s.seed}. Equivalence margin δ = {s.delta:g} "
        f"{METRIC_NAME} (`classify.delta`)."
        + (f" {reading_line(res.reading)}" if res.reading else "")
    )
