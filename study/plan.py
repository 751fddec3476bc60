"""What the workflow needs to know about a study file: paths, folds, groups, weights, rerun digests.

The Snakefile stays a list of jobs: every name on disk comes from `prompts.layout`, every value
from the study file (validated whole before any job), and every re-run trigger from here:

- `params: settings=...` of a rule is the digest of the result-changing settings
  (`prompts.fingerprint.settings_part`) of the sections that rule's command reads; Snakemake's
  `params` trigger re-runs the rule (and, through file times, everything downstream) when it changes.
- inputs are the data images (and labels.csv), the templates file, the split file, base-model and
  weights files: Snakemake's `mtime` trigger follows their content changes.

Which classify keys each classify command reads is written here once (`SPLIT_KEYS`, ...): changing
`classify.epochs` must re-run the CV only, not the split that every LoRA depends on.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.fingerprint import digest, settings_part

# classify keys read by each classify command other than `cv` (which reads them all).
SPLIT_KEYS = ("folds", "repeats", "group_by", "seed")
CALIBRATE_KEYS = ("backbone", "image_size", "seed")
REALISM_KEYS = ("backbone", "weights", "image_size", "seed")
DATA_KEYS = ("skip_bad_images", "normalize", "percentiles", "channels", "z", "t")  # the reading rule re-runs every step
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "prompts" / "default_templates.yaml"

TINY, CALIBRATED, NONE = "tiny", "calibrated", "none"


@dataclass
class Plan:
    """A study file resolved into the workflow's paths and job wildcards (all paths absolute)."""

    study_file: Path
    out: Path
    data: Path
    images: list[str]  # every data image (and labels.csv): inputs of the first jobs
    templates: Path
    split: Path
    split_given: bool  # data.split names the user's split file: an input, never written
    folds: list[int]
    groups: list[dict]  # [{"group", "label", "cell_line"}]
    weights: list[float]
    lora_model: str
    generate_model: str
    tiny_model: bool
    classifier_weights: str  # imagenet, none, or a file (the calibrated one under OUT/models/)
    calibrated: bool
    digests: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"  # study.task; a segmentation study is a `study.segmentation.SegPlan`

    # ------------------------------------------------------------------ output paths
    @property
    def model_dir(self) -> Path:
        return self.out / "models" / "tiny-sd"

    @property
    def calibrated_file(self) -> Path:
        return self.out / "models" / "classifier.weights.h5"

    @property
    def lora_root(self) -> Path:
        return self.out / "lora"

    @property
    def synthetic_root(self) -> Path:
        return self.out / "synthetic"

    @property
    def realism_dir(self) -> Path:
        return self.out / "realism"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    def lora_dir(self, fold, group: str) -> str:
        return str(layout.lora_dir(self.lora_root, int(fold), group))

    def lora_dirs(self, fold) -> list[str]:
        return [self.lora_dir(fold, g["group"]) for g in self.groups]

    def synthetic_dir(self, fold, weight_dir: str) -> str:
        return str(layout.fold_root(self.synthetic_root, int(fold)) / weight_dir)

    def staging_dir(self, fold, weight_dir: str) -> Path:
        """A generation job's own output root; its finished tree is renamed into `synthetic_dir`."""
        return self.out / ".generate" / f"{layout.fold_name(int(fold))}_{weight_dir}"

    @property
    def weight_dirs(self) -> list[str]:
        return [layout.weight_dir_name(w) for w in self.weights]

    def all_synthetic_dirs(self) -> list[str]:
        return [self.synthetic_dir(k, w) for k in self.folds for w in self.weight_dirs]

    def group(self, name: str) -> dict:
        return next(g for g in self.groups if g["group"] == name)

    def weight_of(self, weight_dir: str) -> str:
        """The LoRA weight of a `w<weight>` folder name, as the command-line value (repr round-trips)."""
        return repr(layout.parse_weight_dir(weight_dir))

    # ------------------------------------------------------------------ per-job flags
    def lora_flags(self, group: str) -> str:
        """`--classes C [--cell-lines L]` selecting exactly one LoRA group."""
        g = self.group(group)
        flags = ["--classes", g["label"]]
        if g["cell_line"] is not None:
            flags += ["--cell-lines", g["cell_line"]]
        return " ".join(shlex.quote(f) for f in flags)


def quote(value) -> str:
    return shlex.quote(str(value))


def _keys(section, keys) -> dict:
    part = settings_part(section)
    return {k: part[k] for k in keys if k in part}


def load(study_file) -> Plan:
    """Validate the whole study file (every error, one line each: exit status 2) and resolve it."""
    from prompts.config import load_study, validate_study_file
    from prompts.dataset import read_dataset
    from prompts.errors import UserError

    study_file = Path(study_file).resolve()
    errors = validate_study_file(study_file)
    if errors:
        _fail(errors)
    study = load_study(study_file)
    if study.study.task == "segmentation":
        from study.segmentation import load_or_exit

        return load_or_exit(study, study_file)
    try:
        return _resolve(study, study_file, read_dataset)
    except UserError as err:
        _fail([str(err)])


def _fail(lines: list[str]):
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(2)


def _resolve(study, study_file: Path, read_dataset) -> Plan:
    from prompts.errors import UserError
    from prompts.images import file_of

    where = f"{study_file}"
    if not study.study.output:
        raise UserError(f"{where}: study.output is missing: name the folder of the study's outputs (relative to the study file)")
    if not study.data.data:
        raise UserError(f"{where}: data.data is missing: name the data folder (relative to the study file)")
    out = Path(study.study.output).resolve()
    data = Path(study.data.data).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{where}: study.output {out} is an existing file; name a folder for the study's outputs")
    if out == data or data in out.parents:
        raise UserError(f"{where}: study.output {out} is inside the data folder {data}; outputs never go into the data folder")
    if not study.lora.model:
        raise UserError(f"{where}: lora.model is missing: give a diffusers folder, a .safetensors file, a hub id, "
                        "or `tiny` (the offline smoke model)")
    dataset = read_dataset(data, skip_bad_images=study.data.skip_bad_images)
    records = dataset.select(classes=study.lora.classes or None, cell_lines=study.lora.cell_lines or None).records
    groups = _groups(records, study.lora.per)
    images = sorted({file_of(str(dataset.abspath(r))) for r in dataset.records})  # 'f.czi#scene-2' lives in f.czi
    if (data / "labels.csv").is_file():
        images.append(str(data / "labels.csv"))
    split_given = bool(study.data.split)
    split = Path(study.data.split).resolve() if split_given else out / "folds.json"
    if split_given:
        from prompts.splits import read_split

        n_folds = len(read_split(split, dataset).folds)
    else:
        n_folds = study.classify.folds * study.classify.repeats
    tiny = study.lora.model == TINY
    lora_model = str(out / "models" / "tiny-sd") if tiny else study.lora.model
    gen_model = study.generate.model or study.lora.model
    gen_model = str(out / "models" / "tiny-sd") if gen_model == TINY else gen_model
    cw = study.classify.weights
    calibrated = cw == CALIBRATED
    plan = Plan(
        study_file=study_file, out=out, data=data, images=images,
        templates=Path(study.data.templates).resolve() if study.data.templates else DEFAULT_TEMPLATES,
        split=split, split_given=split_given, folds=list(range(n_folds)), groups=groups,
        weights=list(dict.fromkeys(float(w) for w in study.generate.lora_weights)),
        lora_model=lora_model, generate_model=gen_model, tiny_model=tiny or gen_model == str(out / "models" / "tiny-sd"),
        classifier_weights=str(out / "models" / "classifier.weights.h5") if calibrated else cw, calibrated=calibrated,
    )
    data_part = _keys(study.data, DATA_KEYS)
    plan.digests = {
        "split": digest({"data": data_part, "classify": _keys(study.classify, SPLIT_KEYS)}),
        "calibrate": digest({"data": data_part, "classify": _keys(study.classify, CALIBRATE_KEYS)}),
        "lora": digest({"data": data_part, "lora": settings_part(study.lora), "model": study.lora.model,
                        "model_config": study.lora.model_config}),
        "generate": digest({"data": data_part, "generate": settings_part(study.generate), "model": gen_model,
                            "model_config": study.generate.model_config or study.lora.model_config}),
        "realism": digest({"data": data_part, "classify": _keys(study.classify, REALISM_KEYS)}),
        "cv": digest({"data": data_part, "classify": settings_part(study.classify)}),
    }
    if cw == NONE:
        plan.warnings.append(
            f"{study_file}: classify.weights is none: the classifier starts from random weights, so every mix scores "
            "alike and the report means nothing; use imagenet (real runs) or calibrated (offline smoke runs)")
    return plan


def _groups(records, per: str) -> list[dict]:
    """One entry per LoRA group of the data (sorted by group name), as `lora train --per` forms them."""
    if per == "all":
        from prompts.errors import UserError

        raise UserError("lora.per: all is not run by the workflow (generate samples per class): use class or cell_line_class")
    return [{"group": name, "label": rs[0].label, "cell_line": rs[0].cell_line if per == "cell_line_class" else None}
            for name, rs in layout.lora_groups(records, per).items()]  # the one grouping rule (prompts.layout)
