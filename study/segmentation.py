"""What the workflow needs to know about a segmentation study (`study.task: segmentation`).

The segmentation rules (workflow/rules/segmentation.smk) run, per study file:

    [tiny model] -> pairs split -> one ControlNet per fold (its training pairs only)
    -> synthetic pairs per fold (trees `aug`, `density<X>`) -> manifest -> realism -> CV and report

`resolve(study, study_file)` turns the checked study into a `SegPlan` (the `study.tasks.StudyPlan`
of every task): absolute paths (all from the same `prompts.layout.StudyLayout` as a classification
study), folds, trees, outputs of earlier settings, and the readable re-run params of each rule
(`P.params(rule)`: one `section.key=value` per result-changing key its command reads, as
`study.plan` does for classification, so changing `segment.epochs` re-runs realism and the CV
only, never a ControlNet, and a dry run's reason names the key).

`python -m study.segmentation split --config STUDY --output FILE` writes the folds over the pairs
(`segment.folds`, `repeats`, `group_by`, `seed`) in the split-file format of `classify split`.
(`segment cv` run by hand writes its own split into its --output; the workflow writes one for every job to follow.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.errors import run_cli, setup_logging
from prompts.fingerprint import settings_part
from prompts.layout import StudyLayout
from prompts.schema.data import PAIR_KEYS

from .params import DATA_KEYS, TINY, _keys, readable

TASK = "segmentation"
# segment keys read by `segment realism` and by the split (the CV reads the whole section).
SPLIT_KEYS = ("folds", "repeats", "group_by", "seed")
REALISM_KEYS = ("backbone", "weights", "image_size", "epochs", "batch_size", "learning_rate", "augment", "min_size", "seed")
UNET_WEIGHT_KEYWORDS = ("imagenet", "none", "tiny")  # segment.weights values that name no file
# controlnet keys set per job by the workflow (paths and the fold): never part of a digest.
JOB_KEYS = ("output", "synthetic", "fold", "overwrite")


@dataclass
class SegPlan:
    """A segmentation study file resolved into the workflow's paths and job wildcards (all paths absolute).

    Implements `study.tasks.StudyPlan`, the one interface of every task's plan; every path comes from
    its `layout` (`prompts.layout.StudyLayout`).
    """

    study_file: Path
    layout: StudyLayout
    data: Path
    pair_files: list[str]  # every data image and mask: inputs of the split, ControlNet and segment jobs
    split: Path
    split_given: bool  # data.split names the user's split file: an input, never written
    folds: list[int]
    trees: list[str]  # synthetic trees per fold: `aug`, `density<X>`
    model: str  # the ControlNet's base model (the tiny one under OUT/models/ for `tiny`)
    tiny_model: bool
    unet_weights: list[str] = field(default_factory=list)  # segment.weights when it is a file: an input of realism and CV
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # rule -> {param name: "section.key=value"}
    warnings: list[str] = field(default_factory=list)
    task: str = TASK
    study: object = None  # the validated prompts.config.Study (written to OUT/study.yaml by the guard)

    @property
    def out(self) -> Path:
        return self.layout.out

    def controlnet_dirs(self) -> list[str]:
        return [str(self.layout.controlnet_dir(k)) for k in self.folds]

    def controlnet_seal(self, fold) -> str:
        return str(layout.seal_file(self.layout.controlnet_dir(int(fold))))

    def all_tree_dirs(self) -> list[str]:
        return [str(self.layout.pairs_tree(k, t)) for k in self.folds for t in self.trees]

    def all_tree_seals(self) -> list[str]:
        return [str(layout.seal_file(d)) for d in self.all_tree_dirs()]

    def targets(self) -> list[str]:
        """What `rule all` asks for: the published report and realism, and every seal (ControlNets, trees, both)."""
        lay = self.layout
        return [str(lay.report_dir), str(lay.realism_dir)] + [str(layout.seal_file(d)) for d in self.sealed_folders()]

    def sealed_folders(self) -> list[str]:
        """Every folder output with a seal: ControlNets, synthetic trees, the published realism and report."""
        return self.controlnet_dirs() + self.all_tree_dirs() + [str(self.layout.realism_dir), str(self.layout.report_dir)]

    def folder_outputs(self) -> list[str]:
        """Every folder output a job may (re)make (hidden working folders aside): the guard checks each first."""
        return ([str(self.layout.tiny_model_dir)] if self.tiny_model else []) + self.sealed_folders()

    def params(self, rule: str) -> dict:
        """The rule's `params`: one readable `section.key=value` per result-changing setting (see `study.plan.Plan.params`)."""
        return {name: (lambda wildcards, text=text: text) for name, text in self.settings[rule].items()}

    def stale_outputs(self) -> list[dict]:
        """Pairs trees (`aug`, `density<X>`) and fold ControlNets under OUT that the plan no longer defines.

        `segment cv` reads every tree under OUT/synthetic/, so a tree of earlier settings would enter the CV.
        """
        from .outputs import fold_dirs, stale_in_folds

        lay, folds, trees = self.layout, set(self.folds), set(self.trees)
        found = stale_in_folds(
            lay.synthetic_root, folds, lambda name: layout.parse_pairs_tree(name) is not False, "synthetic pairs",
            lambda name: None if name in trees else f"tree {name} is not planned (controlnet.augment, controlnet.densities)")
        for fold_dir in fold_dirs(lay.controlnet_root):
            k = layout.parse_fold_name(fold_dir.name)
            cn = fold_dir / layout.CONTROLNET_DIR
            if k not in folds and cn.is_dir():
                found.append({"kind": "ControlNet", "path": cn, "reason": f"fold {k} is not in the current split"})
        return found


def resolve(study, study_file: Path) -> SegPlan:
    """The plan of a study that `prompts.check` passed (the task registry's entry, study/tasks.py).

    Every value was checked there, once for every task; what remains is reading: raises
    `prompts.errors.UserError` (one line) only for what the check cannot see (the mix grammar of the segment room).
    """
    from prompts.pair_layouts import layout_of
    from prompts.pairs import read_pairs

    lay = StudyLayout(Path(study.study.output).resolve())
    data = Path(study.data.data).resolve()
    cn, seg = study.controlnet, study.segment
    model_name = cn.model or study.lora.model or study.generate.model
    pairs = read_pairs(data, layout_of(study.data))
    trees = ([layout.pairs_tree_name(None)] if cn.augment else []) + [layout.pairs_tree_name(d) for d in cn.densities]
    split_given = bool(study.data.split)
    split = Path(study.data.split).resolve() if split_given else lay.split_file
    n_folds = len(_read_split(split, data, pairs).folds) if split_given else seg.folds * seg.repeats
    tiny = model_name == TINY
    model = str(lay.tiny_model_dir) if tiny else model_name
    plan = SegPlan(study_file=study_file, layout=lay, data=data,
                   pair_files=sorted({str(p) for pair in pairs for p in (pair.image, pair.mask)}),
                   split=split, split_given=split_given, folds=list(range(n_folds)), trees=list(dict.fromkeys(trees)),
                   model=model, tiny_model=tiny,
                   unet_weights=[] if seg.weights in UNET_WEIGHT_KEYWORDS else [str(Path(seg.weights).resolve())])
    plan.settings = rule_settings(study, model_name)
    plan.study = study
    if seg.weights == "none":
        plan.warnings.append(f"{study_file}: segment.weights is none: the U-Net encoder starts from random weights; "
                             "use imagenet (real runs) or tiny (offline smoke runs)")
    return plan


def resolve_task(study, study_file: Path, config: dict) -> SegPlan:
    """The task registry's entry (study/tasks.py): `resolve`; the merged config is not needed here."""
    return resolve(study, study_file)


def rule_settings(study, model_name: str) -> dict[str, dict[str, str]]:
    """{rule: {param name: "section.key=value"}}: the result-changing settings each rule's command reads."""
    from prompts.schema.controlnet import GENERATE_KEYS, TRAIN_KEYS

    cn, seg = study.controlnet, study.segment
    model = {"model": model_name, "model_config": cn.model_config, "lora": cn.lora}
    train_keys = [k for k in TRAIN_KEYS if k not in JOB_KEYS]
    generate_keys = [k for k in GENERATE_KEYS if k not in JOB_KEYS]
    # the reading rule, as for classification, and how pairs are found and masks read: every step follows them
    data = readable("data", _keys(study.data, (*DATA_KEYS, *PAIR_KEYS)))
    return {
        "split": {**data, **readable("segment", _keys(seg, SPLIT_KEYS))},
        "controlnet": {**data, **readable("controlnet", {**_keys(cn, train_keys), **model})},
        "pairs": {**data, **readable("controlnet", {**_keys(cn, generate_keys), **model})},
        "realism": {**data, **readable("segment", _keys(seg, REALISM_KEYS))},
        "cv": {**data, **readable("segment", settings_part(seg))},
    }


def _read_split(path: Path, data: Path, pairs):
    from prompts.splits import read_split
    from segment.folds import pairs_dataset

    return read_split(path, pairs_dataset(data, pairs))


# ---------------------------------------------------------------------- `split`: folds over the pairs


def write_pairs_split(data_cfg, seg, output) -> Path:
    """Grouped, repeated folds over the pairs of `data_cfg.data` -> the split file `output` (written atomically)."""
    from prompts.errors import UserError
    from prompts.guard import check_output_dir
    from prompts.pair_layouts import layout_of
    from prompts.pairs import read_pairs
    from prompts.splits import write_split
    from segment.folds import make_split, pairs_dataset

    if not data_cfg.data:
        raise UserError("--data is missing: give the folder of image-mask pairs")
    output = Path(output)
    check_output_dir(output.parent, data=data_cfg.data, flag="--output")
    root = Path(data_cfg.data)
    pairs = read_pairs(root, layout_of(data_cfg))
    if not pairs:
        raise UserError(f"{root} holds no image-mask pairs; expected {root}/images/ + {root}/masks/ or Cellpose's name.tif + name_masks.tif")
    split = make_split(pairs_dataset(root, pairs), seg.folds, seg.repeats, seg.group_by, seg.seed)
    write_split(output, split)
    return output


@run_cli
def main(argv=None):
    from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
    from prompts.schema import SECTIONS

    parser = Parser(prog="python -m study.segmentation", description="The segmentation workflow's own steps")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("split", help="folds over image-mask pairs (the split-file format of `classify split`)",
                       description="Write grouped, repeated folds over the pairs; flags override the `segment` and `data` "
                       "sections of --config.")
    add_config_flag(p)
    add_section_flags(p, SECTIONS["data"], keys=("data",))
    add_section_flags(p, SECTIONS["segment"], keys=SPLIT_KEYS)
    p.add_argument("--output", required=True, help="the split file to write (JSON)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    study = read_settings(args, "segment split", ("data", "segment"))
    print(write_pairs_split(study.data, study.segment, args.output))


if __name__ == "__main__":
    main()
