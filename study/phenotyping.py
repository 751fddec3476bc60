"""What the workflow needs to know about a phenotyping study (`study.task: phenotyping`).

The phenotyping rules (workflow/rules/phenotyping.smk) run, per study file, only `python -m phenotype cv`:

    baseline regime alone (every cell cut, every cell's features computed once: the study's feature cache)
    -> every other regime alone, reading that cache -> every regime together: the compared report

With the regime `synthetic` in `phenotype.regimes` (regimes `<scarce regime>+P`), three steps come first, per fold:

    phenotype crops (the fold's training cells as PNG crops per type, OUT/crops/fold_<k>/)
    -> lora train on that folder (one LoRA per type, OUT/lora/fold_<k>/<type>/)
    -> generate per LoRA weight (OUT/synthetic/fold_<k>/w<weight>/<type>/)

With `phenotype.segmentation` unet or stardist, one step comes first, per fold (`pheno_segment`):

    phenotype pairs (the fold's training image-mask pairs and its test images, OUT/segmented/fold_<k>/pairs/)
    -> segment predict (the segmentation task's model trained on those pairs only, predicting the test images:
       OUT/segmented/fold_<k>/masks/)

and every `phenotype cv` job reads those masks (`--segmented OUT/segmented`) and checks by sha256 that no
fold's segmenter trained on that fold's test images.

Each `+P` regime's job (and the report's) reads those trees (`--synthetic`) and traces every crop their
LoRAs saw to a training image of its fold (`--crops`).

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

# segment keys `segment predict` reads (the model and its training; `segment.model` comes from phenotype.segmentation)
SEGMENTER_KEYS = ("pretrained", "backbone", "weights", "image_size", "epochs", "batch_size", "learning_rate", "augment",
                  "min_size", "seed")

TASK = "phenotyping"
# phenotype keys the workflow sets per job (paths, which regime) or that change no result: never re-run triggers.
JOB_KEYS = ("output", "cache_dir", "overwrite")
# phenotype keys that only say which regimes run and which is compared with: a regime's own job does not read them.
REGIME_CHOICE_KEYS = ("regimes", "k", "baseline", "synthetic_fractions")
# phenotype keys `phenotype crops` reads: which cells a fold trains on, and how each is cut
CROPS_KEYS = ("crop_size", "segmentation", "min_size", "min_distance", "folds", "repeats", "seed")
JOB_KEYS = (*JOB_KEYS, "synthetic", "crops", "segmented")  # paths the workflow sets per job
# phenotype keys `phenotype pairs` reads (which images are a fold's training pairs and test images)
PAIRS_KEYS = ("folds", "repeats", "seed", "segmentation")


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
    tiny_model: bool = False  # the tiny diffusion model (lora.model: tiny), for the synthetic regimes only
    folds: list[int] = field(default_factory=list)  # fold indices: the per-fold crops, LoRAs and trees (synthetic only)
    weights: list[float] = field(default_factory=list)  # generate.lora_weights: one tree per fold each (synthetic only)
    lora_model: str = ""
    generate_model: str = ""
    generate_size: int = 0  # generated crops' side: phenotype.crop_size rounded up to a multiple of 8
    generate_fraction: float = 0.0  # the largest phenotype.synthetic_fractions: enough crops for every +P regime
    segmenter: str = ""  # phenotype.segmentation unet or stardist: per fold, the segmentation model's masks; else ''
    warnings: list[str] = field(default_factory=list)
    task: str = TASK
    study: object = None  # the validated prompts.config.Study (written to OUT/study.yaml by the guard)

    @property
    def out(self) -> Path:
        return self.layout.out

    @property
    def feature_cache(self) -> Path:
        return self.layout.feature_cache(self.baseline)

    @property
    def synthetic(self) -> bool:
        """Whether a `<regime>+P` regime is planned (crops, LoRAs and generated trees per fold)."""
        return any("+" in r for r in self.regimes)

    @property
    def weight_dirs(self) -> list[str]:
        return [layout.weight_dir_name(w) for w in self.weights]

    def segmented_dirs(self) -> list[str]:
        """OUT/segmented/fold_<k>/ of every fold (segmentation unet or stardist), else none."""
        return [str(self.layout.segmented_dir(k)) for k in self.folds] if self.segmenter else []

    def segmented_seals(self) -> list[str]:
        """The seals every `phenotype cv` job reads: each fold's predicted masks (none without a segmenter)."""
        return [str(layout.seal_file(Path(d))) for d in self.segmented_dirs()]

    @property
    def segmented_flags(self) -> str:
        """` --segmented OUT/segmented` when a segmenter finds the test cells, else ''."""
        from study.plan import quote

        return f" --segmented {quote(self.layout.segmented_root)}" if self.segmenter else ""

    def crops_dirs(self) -> list[str]:
        return [str(self.layout.crops_dir(k)) for k in self.folds] if self.synthetic else []

    def lora_dirs(self) -> list[str]:
        return [str(self.layout.lora_fold_dir(k)) for k in self.folds] if self.synthetic else []

    def all_synthetic_dirs(self) -> list[str]:
        return [str(self.layout.synthetic_tree(k, w)) for k in self.folds for w in self.weight_dirs]

    def all_synthetic_seals(self) -> list[str]:
        return [str(layout.seal_file(d)) for d in self.all_synthetic_dirs()]

    def synthetic_inputs(self, regime: str) -> list[str]:
        """The seals a regime's job reads: every fold's crops and trees for a `+P` regime, none otherwise."""
        if "+" not in regime:
            return []
        return [str(layout.seal_file(Path(d))) for d in self.crops_dirs()] + self.all_synthetic_seals()

    @property
    def synthetic_flags(self) -> str:
        """The report job's ` --synthetic SYN --crops CROPS` when a `+P` regime is planned, else ''."""
        return plan_synthetic_flags(self) if self.synthetic else ""

    def weight_of(self, weight_dir: str) -> str:
        """The LoRA weight of a `w<weight>` folder name, as the command-line value."""
        return repr(layout.parse_weight_dir(weight_dir))

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
        """Every folder output with a seal: per fold its crops, LoRAs and trees (synthetic only), each regime's
        folder (the baseline's first), the published report."""
        return (self.segmented_dirs() + self.crops_dirs() + self.lora_dirs() + self.all_synthetic_dirs() + self.regime_dirs()
                + [str(self.layout.report_dir)])

    def folder_outputs(self) -> list[str]:
        """Every folder output a job may (re)make (hidden working folders aside): the guard checks each first."""
        return ([str(self.layout.tiny_model_dir)] if self.tiny_model else []) + self.sealed_folders()

    def params(self, rule: str) -> dict:
        """The rule's `params`: one readable `section.key=value` per result-changing setting (see `study.plan.Plan.params`)."""
        return {name: (lambda wildcards, text=text: text) for name, text in self.settings[rule].items()}

    def stale_outputs(self) -> list[dict]:
        """Regime folders under OUT/regimes/ that the plan no longer defines (phenotype.regimes, phenotype.k), and
        per-fold crops, LoRAs and trees of folds or LoRA weights no longer planned."""
        from .outputs import fold_dirs, stale_in_folds

        lay, root, planned = self.layout, self.layout.regimes_root, set(self.regimes)
        stale = [{"kind": "phenotyping regime", "path": d, "reason": f"regime {d.name} is not planned (phenotype.regimes, phenotype.k)"}
                 for d in (sorted(root.iterdir()) if root.is_dir() else []) if d.is_dir() and d.name not in planned]
        folds, weights = set(self.folds), set(self.weight_dirs)
        for kind, base, planned_here in (("crop folder", lay.crops_root, self.synthetic), ("LoRA folder", lay.lora_root, self.synthetic),
                                         ("segmented folder", lay.segmented_root, bool(self.segmenter))):
            why = "no synthetic regime is planned" if base != lay.segmented_root else "phenotype.segmentation is not unet or stardist"
            stale += [{"kind": kind, "path": d, "reason": why if not planned_here
                       else f"fold {layout.parse_fold_name(d.name)} is not in the current folds"}
                      for d in fold_dirs(base) if not planned_here or layout.parse_fold_name(d.name) not in folds]
        trees = stale_in_folds(lay.synthetic_root, folds, lambda name: layout.parse_weight_dir(name) is not None, "synthetic tree",
                               lambda name: None if name in weights else f"LoRA weight {layout.parse_weight_dir(name)!r} is not in generate.lora_weights")
        return stale + [{**t, "reason": "no synthetic regime is planned"} if not self.synthetic else t for t in trees]


def resolve(study, study_file: Path) -> PhenoPlan:
    """The plan of a study that `prompts.check` passed.

    Raises `prompts.errors.UserError` (one line) for what the check cannot see: the regimes' grammar and the
    baseline among them (the phenotype room's own vocabulary).
    """
    from phenotype.regimes import regime_names
    from prompts.mixes import phenotyping_error

    where = f"{study_file}: "
    lay = StudyLayout(Path(study.study.output).resolve())
    data = Path(study.data.data).resolve()
    ph = study.phenotype
    if problem := phenotyping_error(ph):  # the line `prompts check` gives
        raise UserError(where + problem)
    regimes = regime_names(ph.regimes, ph.k, ph.synthetic_fractions)
    plan = PhenoPlan(study_file=study_file, layout=lay, data=data, data_files=data_files(data), regimes=regimes,
                     baseline=ph.baseline, split=lay.split_file)
    if ph.segmentation in ("unet", "stardist"):
        plan_segmenter(plan, study)
    if plan.synthetic:
        plan_synthetic(plan, study)
    plan.flags = {r: regime_flags(r, plan.feature_cache) + (plan_synthetic_flags(plan) if "+" in r else "") + plan.segmented_flags
                  for r in regimes}
    plan.settings = rule_settings(study)
    plan.study = study
    if ph.weights in ("calibrated", "none") and "cnn" in ph.models:
        plan.warnings.append(f"{study_file}: phenotype.weights is {ph.weights}: the cnn is a random network (an offline "
                             "smoke stand-in); use imagenet for real numbers")
    return plan


def plan_segmenter(plan: PhenoPlan, study) -> None:
    """The per-fold segmentation step of `phenotype.segmentation` unet or stardist: the folds (as `phenotype cv`
    makes them); StarDist must be installed (one line now rather than a failed job later)."""
    from phenotype.cv import fold_list
    from phenotype.data import read_data

    ph = study.phenotype
    if ph.segmentation == "stardist":
        try:
            import stardist  # noqa: F401
        except ImportError:
            raise UserError(f"{plan.study_file}: phenotype.segmentation stardist needs the stardist package; pip install "
                            "'stardist>=0.9' (it runs on the pinned TensorFlow) or use phenotype.segmentation unet") from None
    plan.segmenter = ph.segmentation
    plan.folds = list(range(len(fold_list(study.data, ph, read_data(plan.data)))))


def plan_synthetic(plan: PhenoPlan, study) -> None:
    """The per-fold steps of the synthetic regimes: folds (as `phenotype cv` makes them), models, weights, sizes."""
    from phenotype.cv import fold_list
    from phenotype.data import read_data

    from .params import TINY

    ph, lay = study.phenotype, plan.layout
    from prompts.check import synthetic_model_error

    if problem := synthetic_model_error(study):  # the line `prompts check` gives
        raise UserError(f"{plan.study_file}: {problem}")
    plan.folds = list(range(len(fold_list(study.data, ph, read_data(plan.data)))))
    plan.weights = list(dict.fromkeys(float(w) for w in study.generate.lora_weights))
    tiny = str(lay.tiny_model_dir)
    plan.lora_model = tiny if study.lora.model == TINY else str(study.lora.model or "")
    gen = study.generate.model or study.lora.model
    plan.generate_model = tiny if gen == TINY else str(gen)
    plan.tiny_model = tiny in (plan.lora_model, plan.generate_model)
    plan.generate_size = -(-ph.crop_size // 8) * 8
    plan.generate_fraction = max(ph.synthetic_fractions)


def plan_synthetic_flags(plan: PhenoPlan) -> str:
    """` --synthetic SYN --crops CROPS`: the trees a `+P` regime draws from and the crop records its leak check reads."""
    from study.plan import quote

    return f" --synthetic {quote(plan.layout.synthetic_root)} --crops {quote(plan.layout.crops_root)}"


def resolve_task(study, study_file: Path, config: dict) -> PhenoPlan:
    """The task registry's entry (study/tasks.py): `resolve`; the merged config is not needed here."""
    return resolve(study, study_file)


def regime_flags(regime: str, cache: Path) -> str:
    """`--regimes R [--k K] --baseline NAME --cache-dir CACHE`: `phenotype cv` of one expanded regime name alone."""
    from phenotype.regimes import RETRAINED, annotated_k
    from study.plan import quote

    k = annotated_k(regime)
    plain = k is not None and "+" not in regime
    base = f"--regimes {RETRAINED} --k {k}" if plain else f"--regimes {quote(regime)}"
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
    gen = {k: v for k, v in settings_part(study.generate).items() if k not in ("lora_weights", "fraction", "count", "size", "balance")}
    return {
        "regime": {**data, **readable("phenotype", own)},
        "report": {**data, **readable("phenotype", every)},
        "crops": {**data, **readable("phenotype", _keys(ph, CROPS_KEYS))},
        "segment": {**data, **readable("phenotype", _keys(ph, PAIRS_KEYS)),
                    **readable("segment", _keys(study.segment, SEGMENTER_KEYS))},
        "lora": {**data, **readable("lora", {**settings_part(study.lora), "model": study.lora.model,
                                             "model_config": study.lora.model_config})},
        "generate": {**data, **readable("generate", {**gen, "model": study.generate.model or study.lora.model}),
                     **readable("phenotype", _keys(ph, ("crop_size", "synthetic_fractions")))},
    }
