"""What the workflow needs to know about a phenotyping study (`study.task: phenotyping`).

The phenotyping rules (workflow/rules/phenotyping.smk) run, per study file, only `python -m phenotype cv`:

    baseline regime alone (every cell cut, every cell's features computed once: the study's feature cache)
    -> every other regime alone, reading that cache -> every regime together: the compared report

Each regime's own run is a sealed folder `OUT/regimes/<regime>/` (its one-regime report, results and
overlays): one more regime is one more job that only fits classifiers on cached features, and a regime
dropped from `phenotype.regimes` (or a `k` dropped from `phenotype.k`) leaves a folder of earlier settings
that is moved to OUT/dropped/. The report job runs every regime again on the cached features, in the same
folds, and compares them (verdicts against `phenotype.baseline`, one Holm family); it is published into
OUT/report/ by the shared publish rule (workflow/rules/common.smk).

`resolve_task(study, study_file, config)` turns the checked study into a `PhenoPlan` (the
`study.tasks.StudyPlan` of every task): absolute paths from `prompts.layout.StudyLayout`, the regimes, the
data files (inputs of every job), outputs of earlier settings and the readable re-run params of each rule
(`P.params(rule)`), so that changing `phenotype.epochs` re-runs the regimes and the report and a dry run's
reason names the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.errors import UserError
from prompts.fingerprint import settings_part
from prompts.layout import StudyLayout

from .params import DATA_KEYS, _keys, readable

TASK = "phenotyping"
# phenotype keys the workflow sets per job (paths, which regime) or that change no result: never re-run triggers.
JOB_KEYS = ("output", "cache_dir", "overwrite")
# phenotype keys that only say which regimes run and which is compared with: a regime's own job does not read them.
REGIME_CHOICE_KEYS = ("regimes", "k", "baseline")


@dataclass
class PhenoPlan:
    """A phenotyping study file resolved into the workflow's paths and job wildcards (all paths absolute).

    Implements `study.tasks.StudyPlan`, the one interface of every task's plan; every path comes from
    its `layout` (`prompts.layout.StudyLayout`).
    """

    study_file: Path
    layout: StudyLayout
    data: Path
    data_files: list[str]  # every file under DATA/mono/ and DATA/co/: inputs of every job
    regimes: list[str]  # expanded regime names, e.g. ['zero-shot', 'retrained-k1', 'co-only']
    baseline: str  # the regime whose job fills the feature cache (and every verdict compares with)
    flags: dict[str, str] = field(default_factory=dict)  # regime -> `phenotype cv` flags that run it alone
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # rule -> {param name: "section.key=value"}
    split: Path = Path()  # none given: `phenotype cv` makes its folds from phenotype.folds/seed (the one make_split) and records them in its OUT/split.json
    split_given: bool = False
    tiny_model: bool = False  # no diffusion model: the regimes need none
    warnings: list[str] = field(default_factory=list)
    task: str = TASK
    study: object = None  # the validated prompts.config.Study (written to OUT/study.yaml by the guard)

    @property
    def out(self) -> Path:
        return self.layout.out

    @property
    def feature_cache(self) -> Path:
        return self.layout.feature_cache(self.baseline)

    def regime_dirs(self) -> list[str]:
        """The baseline's folder first (it makes the feature cache), then every other regime's."""
        return [str(self.layout.regime_dir(r)) for r in [self.baseline] + [r for r in self.regimes if r != self.baseline]]

    def regime_seal(self, regime: str) -> str:
        return str(layout.seal_file(self.layout.regime_dir(regime)))

    def regime_flags(self, regime: str) -> str:
        """The `phenotype cv` flags that run `regime` alone (shell-quoted)."""
        return self.flags[regime]

    def targets(self) -> list[str]:
        """What `rule all` asks for: the published report, and every seal (each regime's folder, the report)."""
        return [str(self.layout.report_dir)] + [str(layout.seal_file(d)) for d in self.sealed_folders()]

    def sealed_folders(self) -> list[str]:
        """Every folder output with a seal: each regime's folder (the baseline's first), the published report."""
        return self.regime_dirs() + [str(self.layout.report_dir)]

    def folder_outputs(self) -> list[str]:
        """Every folder output a job may (re)make (hidden working folders aside): the guard checks each first."""
        return self.sealed_folders()

    def params(self, rule: str) -> dict:
        """The rule's `params`: one readable `section.key=value` per result-changing setting (see `study.plan.Plan.params`)."""
        return {name: (lambda wildcards, text=text: text) for name, text in self.settings[rule].items()}

    def stale_outputs(self) -> list[dict]:
        """Regime folders under OUT/regimes/ that the plan no longer defines (phenotype.regimes, phenotype.k)."""
        root, planned = self.layout.regimes_root, set(self.regimes)
        if not root.is_dir():
            return []
        return [{"kind": "phenotyping regime", "path": d,
                 "reason": f"regime {d.name} is not planned (phenotype.regimes, phenotype.k)"}
                for d in sorted(root.iterdir()) if d.is_dir() and d.name not in planned]


def resolve(study, study_file: Path) -> PhenoPlan:
    """The plan of a study that `prompts.check` passed.

    Raises `prompts.errors.UserError` (one line) for what the check cannot see: the regimes' grammar and the
    baseline among them (the phenotype room's own vocabulary).
    """
    from phenotype.regimes import regime_names

    where = f"{study_file}: "
    lay = StudyLayout(Path(study.study.output).resolve())
    data = Path(study.data.data).resolve()
    ph = study.phenotype
    try:
        regimes = regime_names(ph.regimes, ph.k)
    except UserError as err:
        raise UserError(where + str(err).replace("--regimes", "phenotype.regimes")) from None
    if ph.baseline not in regimes:
        raise UserError(f"{where}phenotype.baseline {ph.baseline} is not one of the regimes ({', '.join(regimes)}); "
                        "name one of them")
    plan = PhenoPlan(study_file=study_file, layout=lay, data=data, data_files=data_files(data), regimes=regimes,
                     baseline=ph.baseline, split=lay.split_file)
    plan.flags = {r: regime_flags(r, plan.feature_cache) for r in regimes}
    plan.settings = rule_settings(study)
    plan.study = study
    if ph.weights in ("calibrated", "none") and "cnn" in ph.models:
        plan.warnings.append(f"{study_file}: phenotype.weights is {ph.weights}: the cnn is a random network (an offline "
                             "smoke stand-in); use imagenet for real numbers")
    return plan


def resolve_task(study, study_file: Path, config: dict) -> PhenoPlan:
    """The task registry's entry (study/tasks.py): `resolve`; the merged config is not needed here."""
    return resolve(study, study_file)


def regime_flags(regime: str, cache: Path) -> str:
    """`--regimes R [--k K] --baseline NAME --cache-dir CACHE`: `phenotype cv` of one expanded regime name alone."""
    from phenotype.regimes import RETRAINED, annotated_k
    from study.plan import quote

    k = annotated_k(regime)
    base = f"--regimes {RETRAINED} --k {k}" if k is not None else f"--regimes {regime}"
    return f"{base} --baseline {regime} --cache-dir {quote(cache)}"


def data_files(data: Path) -> list[str]:
    """Every file under DATA/mono/ and DATA/co/ (images, masks, cell types): a changed one re-runs every job."""
    files = [p for sub in ("mono", "co") if (data / sub).is_dir() for p in (data / sub).rglob("*")
             if p.is_file() and not p.name.startswith(".")]
    return sorted(str(p) for p in files)


def rule_settings(study) -> dict[str, dict[str, str]]:
    """{rule: {param name: "section.key=value"}}: the result-changing settings each rule's command reads."""
    ph = study.phenotype
    data = readable("data", _keys(study.data, DATA_KEYS))  # the reading rule: every job follows it
    every = {k: v for k, v in settings_part(ph).items() if k not in JOB_KEYS}
    own = {k: v for k, v in every.items() if k not in REGIME_CHOICE_KEYS}
    return {
        "regime": {**data, **readable("phenotype", own)},
        "report": {**data, **readable("phenotype", every)},
    }
