"""The typed results of a CV run, their verdicts and their flags.

`classify.cv.summarize` writes the results as a plain dict (the results.json contract); `CVResults.from_dict`
reads that dict (or an older results.json) into dataclasses the report uses, so the report names
attributes, not string keys. The verdicts and flags are computed here once, stored in the dict by
`summarize` (results.json and results.csv carry them), and recomputed when an older file lacks them.

Verdicts (`analysis.verdicts.decide_family`): every synthetic mix of every LoRA weight against `real` on
macro F1 is one Holm family; the baselines without synthetic images (oversample, classweight, noaug) are
a second one. δ is `classify.delta`.

Flags (each a short name, so a script reading results.csv finds them):
- `single_class`: a mix whose classifier predicted one class in every fold;
- `near_constant`: not that, but ≥ 95 % of its predictions were one class in some fold or overall;
- `chance_level` (study): the `real` baseline's balanced accuracy is not above 1/n_classes + 0.05, or its
  corrected 95 % interval reaches chance;
- `smoke` (study, added by the report): random or stand-in weights, or synthetic images of the tiny model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from analysis import stats
from analysis.crossval import REAL_TREE  # noqa: F401  (the report reads it here: the tree name of real-only mixes)
from analysis.verdicts import Verdict, decide_family
from prompts.schema.classify import ClassifySection

PRIMARY = "f1"  # the metric verdicts are about: macro F1
NEAR_CONSTANT = 0.95  # share of predictions in one class that flags a classifier as near-constant
CHANCE_MARGIN = 0.05  # balanced accuracy not above 1/n_classes + this is chance level
SINGLE_CLASS, NEAR_CONSTANT_FLAG, CHANCE_LEVEL, SMOKE = "single_class", "near_constant", "chance_level", "smoke"


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one mix over its folds."""

    mean: float
    std: float
    folds: list[float]  # one value per fold, in the order of MixRow.folds


@dataclass(frozen=True)
class VsReal:
    """One metric of one mix minus `real`, paired over the folds both ran on."""

    diff_mean: float
    diff_std: float
    t: float
    p: float  # Nadeau-Bengio corrected two-sided p
    min_significant_diff: float = float("nan")


@dataclass
class MixRow:
    """One row of a LoRA weight's table: a mix, summarised over folds."""

    mix: str
    tree: str  # the synthetic tree (w<weight>) or REAL_TREE
    uses_synthetic: bool
    folds: list[int]
    metrics: dict[str, MetricSummary]
    vs_real: dict[str, VsReal]
    synthetic_fraction: float
    confusion: list[list[int]]  # (n_classes, n_classes) summed over folds; rows true, columns predicted
    per_class: dict[str, dict[str, float | None]]
    leaky_folds: list[int] = field(default_factory=list)
    shortfall: dict[str, int] = field(default_factory=dict)
    verdict: Verdict | None = None  # macro F1 against `real`
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """One (tree, mix, fold) training run, without its predictions."""

    tree: str
    mix: str
    fold: int
    repeat: int
    n_train: int
    n_test: int
    synthetic_fraction: float
    leaky: bool
    metrics: dict  # analysis.stats.fold_metrics

    @property
    def predicted(self) -> np.ndarray:
        """(n_classes,) how many test images were predicted as each class."""
        return np.asarray(self.metrics["confusion"]).sum(axis=0)


@dataclass
class CVResults:
    data: str
    split: str | None
    group_by: str | None
    synthetic: str | None
    classes: list[str]
    class_counts: dict[str, int]
    n_folds: int
    n_splits: int
    repeats: int
    n_train_mean: float
    n_test_mean: float
    wilcoxon_min_p: float
    settings: ClassifySection
    tables: dict[str, list[MixRow]]
    runs: list[Run]
    flags: dict = field(default_factory=dict)  # study flags: {name: details}
    synthetic_per_fold: list = field(default_factory=list)
    reading: dict | None = None  # the reading rule's record (`prompts.normalize.Reading.record`); None in older files

    @classmethod
    def from_dict(cls, d: dict) -> CVResults:
        """The typed view of a results dict (summarize's, or a results.json, older ones included)."""
        known = {f.name for f in dataclasses.fields(ClassifySection)}
        settings = ClassifySection(**{k: v for k, v in d["settings"].items() if k in known})
        tables = {t: [_row(r) for r in rows] for t, rows in d["tables"].items()}
        runs = [Run(r["tree"], r["mix"], r["fold"], r.get("repeat", 0), r["n_train"], r["n_test"], r["synthetic_fraction"],
                    bool(r.get("leaky")), r["metrics"]) for r in d["runs"]]
        out = cls(d["data"], d.get("split"), d.get("group_by"), d.get("synthetic"), list(d["classes"]), dict(d["class_counts"]),
                  d["n_folds"], d["n_splits"], d["repeats"], d["n_train_mean"], d["n_test_mean"], d["wilcoxon_min_p"],
                  settings, tables, runs, dict(d.get("flags") or {}), list(d.get("synthetic_per_fold", [])),
                  d.get("reading"))
        if any(r.vs_real and r.verdict is None for rows in tables.values() for r in rows):
            verdicts = family_verdicts(out)
            for rows in tables.values():
                for r in rows:
                    r.verdict = verdicts.get((r.tree, r.mix), r.verdict)
        if not any(r.flags for rows in tables.values() for r in rows):
            for rows in tables.values():
                for r in rows:
                    r.flags = row_flags(out.runs_of(r.tree, r.mix))
        if CHANCE_LEVEL not in out.flags and (chance := chance_level(out)):
            out.flags[CHANCE_LEVEL] = chance
        return out

    @classmethod
    def of(cls, results) -> CVResults:
        """The typed results of a results dict, or the typed results themselves."""
        return results if isinstance(results, CVResults) else cls.from_dict(results)

    def runs_of(self, tree: str, mix: str) -> list[Run]:
        return sorted((r for r in self.runs if (r.tree, r.mix) == (tree, mix)), key=lambda r: r.fold)

    def real_row(self, tree: str | None = None) -> MixRow | None:
        """The `real` mix's row (the same in every table)."""
        for t, rows in self.tables.items():
            if tree in (None, t):
                for r in rows:
                    if r.mix == "real":
                        return r
        return None

    def rows(self) -> list[MixRow]:
        """Every row once (the `real`-tree rows repeat in each LoRA weight's table)."""
        seen, out = set(), []
        for rows in self.tables.values():
            for r in rows:
                if (r.tree, r.mix) not in seen:
                    seen.add((r.tree, r.mix))
                    out.append(r)
        return out


def _row(r: dict) -> MixRow:
    metrics = {m: MetricSummary(v["mean"], v["std"], list(v.get("folds", []))) for m, v in r["metrics"].items()}
    vs_real = {m: VsReal(v["diff_mean"], v["diff_std"], v.get("t", float("nan")), v["p"], v.get("min_significant_diff", float("nan")))
               for m, v in r["vs_real"].items()}
    verdict = Verdict(**r["verdict"]) if r.get("verdict") else None
    return MixRow(r["mix"], r["tree"], bool(r["uses_synthetic"]), list(r["folds"]), metrics, vs_real, float(r["synthetic_fraction"]),
                  r.get("confusion", []), r.get("per_class", {}), list(r.get("leaky_folds", [])), dict(r.get("shortfall", {})),
                  verdict, list(r.get("flags", [])))


# ---------------------------------------------------------------- verdicts


def paired_diffs(row: MixRow, real: MixRow, metric: str = PRIMARY) -> list[float]:
    """metric(mix) - metric(real) on each fold both ran on, in fold order."""
    mine = dict(zip(row.folds, row.metrics[metric].folds))
    theirs = dict(zip(real.folds, real.metrics[metric].folds))
    return [mine[k] - theirs[k] for k in sorted(set(mine) & set(theirs))]


def family_verdicts(res: CVResults, metric: str = PRIMARY) -> dict[tuple[str, str], Verdict]:
    """(tree, mix) -> verdict against `real`: synthetic mixes of every tree in one Holm family, baselines in another."""
    real = res.real_row()
    if real is None:
        return {}
    out = {}
    for synthetic in (True, False):
        rows = [r for r in res.rows() if r.mix != "real" and r.uses_synthetic == synthetic and r.vs_real.get(metric)]
        diffs = {f"{r.tree}/{r.mix}": paired_diffs(r, real, metric) for r in rows}
        if not diffs:
            continue
        verdicts = decide_family(diffs, res.n_train_mean, res.n_test_mean, delta=res.settings.delta, folds=res.n_splits)
        out.update({(r.tree, r.mix): verdicts[f"{r.tree}/{r.mix}"] for r in rows})
    return out


# ---------------------------------------------------------------- flags


def predicted_shares(runs: list[Run]) -> tuple[list[float], float, int]:
    """(largest share of one predicted class per fold, the same over all folds, that class's index overall)."""
    per_fold = []
    total = None
    for r in runs:
        pred = r.predicted
        per_fold.append(float(pred.max() / pred.sum()) if pred.sum() else 0.0)
        total = pred if total is None else total + pred
    if total is None or not total.sum():
        return per_fold, 0.0, -1
    return per_fold, float(total.max() / total.sum()), int(total.argmax())


def row_flags(runs: list[Run]) -> list[str]:
    """`single_class` (one class predicted in every fold) or `near_constant` (≥ 95 % one class in a fold or overall)."""
    if not runs:
        return []
    if all(np.count_nonzero(r.predicted) == 1 for r in runs):
        return [SINGLE_CLASS]
    per_fold, overall, _ = predicted_shares(runs)
    return [NEAR_CONSTANT_FLAG] if max(per_fold + [overall]) >= NEAR_CONSTANT else []


def chance_level(res: CVResults) -> dict | None:
    """Details when the `real` baseline is at chance level (balanced accuracy), else None.

    Chance is 1/n_classes; the baseline is flagged when its mean is not above chance + CHANCE_MARGIN or when its
    corrected 95 % interval (Nadeau-Bengio variance of a mean over overlapping folds) reaches chance.
    """
    real = res.real_row()
    if real is None or not real.folds:
        return None
    m = real.metrics["balanced_accuracy"]
    chance = 1.0 / len(res.classes)
    lo, hi = stats.corrected_interval(m.mean, m.std, len(real.folds), res.n_train_mean, res.n_test_mean)
    if m.mean > chance + CHANCE_MARGIN and not (np.isfinite(lo) and lo <= chance):
        return None
    return {"balanced_accuracy": m.mean, "ci_low": lo, "ci_high": hi, "chance": chance, "margin": CHANCE_MARGIN}


def annotate(summary: dict) -> dict:
    """Add each row's verdict and flags and the study flags to a summarize() dict, in place; returns it."""
    res = CVResults.from_dict({**summary, "tables": {t: [{k: v for k, v in r.items() if k not in ("verdict", "flags")}
                                                         for r in rows] for t, rows in summary["tables"].items()},
                               "flags": {}})
    for t, rows in summary["tables"].items():
        for row, typed in zip(rows, res.tables[t]):
            row["verdict"] = dataclasses.asdict(typed.verdict) if typed.verdict else None
            row["flags"] = typed.flags
    summary["flags"] = res.flags
    return summary
