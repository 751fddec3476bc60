"""What the workflow needs to know about a study: paths, folds, groups, weights, re-run triggers.

The Snakefile stays a list of jobs: every path on disk comes from `prompts.layout.StudyLayout`,
every value from Snakemake's merged `config` (the `--configfile`s and `--config` overrides),
checked whole before any job by `prompts.check` (the check `python -m prompts check` runs), and
every re-run trigger from here:

- `params` of a rule are the result-changing settings (`prompts.fingerprint.settings_part`) of the
  sections its command reads, one readable `section.key=value` string each: Snakemake's `params`
  trigger re-runs the rule when one changes, and its dry-run reason names the keys that changed.
- inputs are the data images (and labels.csv), the templates file, the split file, base-model and
  weights files, and the seals of the folders a job reads: Snakemake's `mtime` and `input`
  triggers follow their content.

Relative paths in the config are relative to the folder of the first `--configfile` (the study
file; later files and `--config` overlay it). Which classify keys each classify command reads is
written here once (`SPLIT_KEYS`, ...): changing `classify.epochs` re-runs the CV only.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.fingerprint import settings_part
from prompts.layout import StudyLayout

from .params import DATA_KEYS, TINY, _fail, _keys, readable  # noqa: F401  (read from here too)

# classify keys read by each classify command other than `cv` (which reads them all).
SPLIT_KEYS = ("folds", "repeats", "group_by", "seed")
CALIBRATE_KEYS = ("backbone", "image_size", "seed")
REALISM_KEYS = ("backbone", "weights", "image_size", "seed")
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "study.schema.yaml"

CALIBRATED, NONE = "calibrated", "none"


@dataclass
class Plan:
    """A classification study resolved into the workflow's paths and job wildcards (all paths absolute).

    Implements `study.tasks.StudyPlan`, the one interface of every task's plan.
    """

    study_file: Path  # the first --configfile: relative paths are relative to its folder
    layout: StudyLayout
    data: Path
    images: list[str]  # every data image (and labels.csv): inputs of the first jobs
    templates: Path  # data.templates, or OUT/templates.yaml: the default templates copied in (`default_templates`)
    templates_given: bool  # data.templates names the user's templates file: an input, never written
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
    blind_inputs: list[str] = field(default_factory=list)  # files of classify.blind (the CV report adds them)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # rule -> {param name: "section.key=value"}
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"  # study.task (the registry: study/tasks.py)
    study: object = None  # the validated prompts.config.Study

    @property
    def out(self) -> Path:
        return self.layout.out

    def lora_dirs(self, fold) -> list[str]:
        return [str(self.layout.lora_dir(fold, g["group"])) for g in self.groups]

    def lora_seals(self, fold) -> list[str]:
        return [str(layout.seal_file(d)) for d in self.lora_dirs(fold)]

    @property
    def weight_dirs(self) -> list[str]:
        return [layout.weight_dir_name(w) for w in self.weights]

    def all_synthetic_dirs(self) -> list[str]:
        return [str(self.layout.synthetic_tree(k, w)) for k in self.folds for w in self.weight_dirs]

    def all_synthetic_seals(self) -> list[str]:
        return [str(layout.seal_file(d)) for d in self.all_synthetic_dirs()]

    def sealed_folders(self) -> list[str]:
        """Every folder output with a seal: LoRAs, synthetic trees, the published realism and report."""
        loras = [d for k in self.folds for d in self.lora_dirs(k)]
        return loras + self.all_synthetic_dirs() + [str(self.layout.realism_dir), str(self.layout.report_dir)]

    def targets(self) -> list[str]:
        """What `rule all` asks for: the published report and realism, and every seal."""
        return [str(self.layout.report_dir), str(self.layout.realism_dir)] + [str(layout.seal_file(d)) for d in self.sealed_folders()]

    def folder_outputs(self) -> list[str]:
        """Every folder output a job may (re)make (hidden working folders aside): the guard checks each first."""
        return ([str(self.layout.tiny_model_dir)] if self.tiny_model else []) + self.sealed_folders()

    def stale_outputs(self) -> list[dict]:
        """Synthetic trees and LoRA folders under OUT that the plan no longer defines: [{kind, path, reason}]."""
        from .outputs import stale_in_folds

        lay = self.layout
        folds, weights, groups = set(self.folds), set(self.weight_dirs), {g["group"] for g in self.groups}
        trees = stale_in_folds(
            lay.synthetic_root, folds, lambda name: layout.parse_weight_dir(name) is not None, "synthetic tree",
            lambda name: None if name in weights else f"LoRA weight {layout.parse_weight_dir(name)!r} is not in generate.lora_weights")
        loras = stale_in_folds(lay.lora_root, folds, lambda name: not name.startswith("."), "LoRA",
                               lambda name: None if name in groups else f"group {name!r} is not in the current study")
        return trees + loras

    def group(self, name: str) -> dict:
        return next(g for g in self.groups if g["group"] == name)

    def weight_of(self, weight_dir: str) -> str:
        """The LoRA weight of a `w<weight>` folder name, as the command-line value (repr round-trips)."""
        return repr(layout.parse_weight_dir(weight_dir))

    def lora_flags(self, group: str) -> str:
        """`--classes C [--cell-lines L]` selecting exactly one LoRA group."""
        g = self.group(group)
        flags = ["--classes", g["label"]]
        if g["cell_line"] is not None:
            flags += ["--cell-lines", g["cell_line"]]
        return " ".join(shlex.quote(f) for f in flags)

    def lora_chunks(self) -> list[list[str]]:
        """The groups of each LoRA job of a fold: one group each, or `lora.together` groups in one joint job."""
        from prompts.schema.lora import together_size

        names = [g["group"] for g in self.groups]
        size = together_size(self.study.lora.together, len(names)) if self.study is not None else 1
        return [names[i:i + size] for i in range(0, len(names), size)]

    @staticmethod
    def lora_chunk_flags(chunk: list[str]) -> str:
        """`--groups A B --together all`: one joint `lora train` of exactly these groups."""
        return " ".join(shlex.quote(f) for f in ["--groups", *chunk, "--together", "all"])

    def params(self, rule: str) -> dict:
        """The rule's `params`: one readable `section.key=value` per result-changing setting it reads.

        Each is a function of the wildcards alone, so Snakemake neither formats its braces (a regex
        `\\d{8}`) nor counts it as derived from files: its value is recorded and compared.
        """
        return {name: (lambda wildcards, text=text: text) for name, text in self.settings[rule].items()}


def quote(value) -> str:
    return shlex.quote(str(value))


def load(study_file) -> Plan:
    """The plan of a study file (as `snakemake --configfile FILE` with no overrides)."""
    from prompts.errors import UserError
    from prompts.files import read_yaml_mapping

    study_file = Path(study_file).resolve()
    try:
        raw = read_yaml_mapping(study_file, "study file")
    except UserError as err:
        _fail([str(err)])
    return from_config(raw, study_file)


def typed_config(config: dict, config_args=None) -> dict:
    """Snakemake's merged config with each `--config KEY=VALUE` read again as YAML, as a study file would be.

    Snakemake reads nested `--config` values with YAML's base loader, so `classify={epochs: 3}`
    arrives as the string '3'; read with the safe loader, it is the integer a study file gives.
    """
    import copy

    import yaml
    from snakemake.utils import update_config

    typed = copy.deepcopy(dict(config))
    for entry in config_args or []:
        if not isinstance(entry, str) or "=" not in entry:
            continue
        key, value = entry.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            continue  # Snakemake's own reading (a string) stands; the check names it if it is wrong
        update_config(typed, {key: parsed})
    return typed


def from_config(config: dict, study_file, config_args=None) -> Plan:
    """Check Snakemake's merged config whole (every error one line, exit status 2) and resolve it.

    config_args: the raw `--config KEY=VALUE` entries (`workflow.config_settings.config_args`).
    """
    from prompts.check import check_mapping
    from prompts.errors import UserError

    study_file = Path(study_file).resolve()
    config = typed_config(config, config_args)
    study, errors = check_mapping(config, study_file)
    if errors:
        _fail(errors)
    from .tasks import get

    try:
        return get(study.study.task).resolve(study, study_file, config)
    except UserError as err:
        _fail([str(err)])


def resolve_classification(study, study_file: Path, config: dict) -> Plan:
    """The plan of a checked classification study (the task registry's entry, study/tasks.py)."""
    _validate(config, study_file)
    return _resolve(study, study_file)


def _validate(config: dict, study_file: Path) -> None:
    """Snakemake's own validation against the JSON Schema generated from the same schema (a second net)."""
    import copy

    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(copy.deepcopy(dict(config)), str(SCHEMA_FILE), set_default=False)
    except WorkflowError as err:
        _fail([f"{study_file}: " + " ".join(str(err).split())[:500]])


def _resolve(study, study_file: Path) -> Plan:
    from prompts.dataset import read_dataset
    from prompts.images import file_of

    lay = StudyLayout(Path(study.study.output).resolve())
    data = Path(study.data.data).resolve()
    from prompts.normalize import from_section

    dataset = read_dataset(data, skip_bad_images=study.data.skip_bad_images, reading=from_section(study.data))  # t: each
    records = dataset.select(classes=study.lora.classes or None, cell_lines=study.lora.cell_lines or None).records
    images = sorted({file_of(str(dataset.abspath(r))) for r in dataset.records})  # 'f.czi#scene-2' lives in f.czi
    if (data / "labels.csv").is_file():
        images.append(str(data / "labels.csv"))
    split_given = bool(study.data.split)
    split = Path(study.data.split).resolve() if split_given else lay.split_file
    if split_given:
        from prompts.splits import read_split

        n_folds = len(read_split(split, dataset).folds)
    else:
        n_folds = study.classify.folds * study.classify.repeats
    tiny_dir = str(lay.tiny_model_dir)
    lora_model = tiny_dir if study.lora.model == TINY else study.lora.model
    gen_model = study.generate.model or study.lora.model
    gen_model = tiny_dir if gen_model == TINY else gen_model
    cw = study.classify.weights
    calibrated = cw == CALIBRATED
    plan = Plan(
        study_file=study_file, layout=lay, data=data, images=images,
        templates=Path(study.data.templates).resolve() if study.data.templates else lay.templates_file,
        templates_given=bool(study.data.templates),
        split=split, split_given=split_given, folds=list(range(n_folds)), groups=_groups(records, study.lora.per),
        weights=list(dict.fromkeys(float(w) for w in study.generate.lora_weights)),
        lora_model=lora_model, generate_model=gen_model, tiny_model=tiny_dir in (lora_model, gen_model),
        classifier_weights=str(lay.calibrated_weights) if calibrated else cw, calibrated=calibrated,
        blind_inputs=_files_of(study.classify.blind), study=study,
    )
    plan.lora_chunks()  # a bad lora.together: one line now, not a traceback from the rules
    plan.settings = rule_settings(study, gen_model)
    if cw == NONE:
        plan.warnings.append(
            f"{study_file}: classify.weights is none: the classifier starts from random weights, so every mix scores "
            "alike and the report means nothing; use imagenet (real runs) or calibrated (offline smoke runs)")
    return plan


def default_templates_digest() -> str:
    """The sha256 of the toolkit's default templates: the `default_templates` rule's param, so a job follows their
    content while no path of the toolkit's folder enters an input (moving the folder re-runs nothing)."""
    from prompts.fingerprint import file_sha256
    from prompts.templates import DEFAULT_TEMPLATES

    return file_sha256(DEFAULT_TEMPLATES)


def _files_of(path) -> list[str]:
    """The files of a folder (or the file itself): a job's inputs, so that adding or changing them re-runs it."""
    if not path:
        return []
    p = Path(path).resolve()
    return [str(p)] if p.is_file() else sorted(str(f) for f in p.rglob("*") if f.is_file())


def rule_settings(study, gen_model: str | None = None) -> dict[str, dict[str, str]]:
    """{rule: {param name: "section.key=value"}}: the result-changing settings each rule's command reads."""
    data_part = readable("data", _keys(study.data, DATA_KEYS))
    gen_model = gen_model or study.generate.model or study.lora.model
    return {
        "split": {**data_part, **readable("classify", _keys(study.classify, SPLIT_KEYS))},
        "calibrate": {**data_part, **readable("classify", _keys(study.classify, CALIBRATE_KEYS))},
        "lora": {**data_part, **readable("lora", {**settings_part(study.lora), "model": study.lora.model,
                                                   "model_config": study.lora.model_config})},
        "generate": {**data_part, **readable("generate", {**_without(settings_part(study.generate), "lora_weights"), "model": gen_model,
                                                           "model_config": study.generate.model_config or study.lora.model_config})},
        "realism": {**data_part, **readable("classify", _keys(study.classify, REALISM_KEYS))},
        "cv": {**data_part, **readable("classify", settings_part(study.classify))},
    }


def _without(part: dict, *keys: str) -> dict:
    """A settings part less the keys a job's output path already carries (a generate job's own LoRA weight)."""
    return {k: v for k, v in part.items() if k not in keys}


def _groups(records, per: str) -> list[dict]:
    """One entry per LoRA group of the data (sorted by group name), as `lora train --per` forms them."""
    if per == "all":
        from prompts.errors import UserError

        raise UserError("lora.per: all is not run by the workflow (generate samples per class): use class or cell_line_class")
    return [{"group": name, "label": rs[0].label, "cell_line": rs[0].cell_line if per == "cell_line_class" else None}
            for name, rs in layout.lora_groups(records, per).items()]  # the one grouping rule (prompts.layout)
