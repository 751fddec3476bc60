"""What the workflow needs to know about a segmentation study (`study.task: segmentation`).

The segmentation rules (workflow/rules/segmentation.smk) run, per study file:

    [tiny model] -> pairs split -> one ControlNet per fold (its training pairs only)
    -> synthetic pairs per fold (trees `aug`, `density<X>`) -> manifest -> realism -> CV and report

`resolve(study, study_file)` turns the validated study into a `SegPlan`: absolute paths (the
same `prompts.layout.StudyLayout` as a classification study: OUT/study.yaml, OUT/folds.json, the
lock, OUT/.stage/, seals), folds, trees, and the readable re-run params of each rule
(`P.params(rule)`: one `section.key=value` per result-changing key its command reads, as
`study.plan` does for classification, so changing `segment.epochs` re-runs realism and the CV
only, never a ControlNet, and a dry run's reason names the key).

`python -m study.segmentation split --config STUDY --output FILE` writes the folds over the pairs
(`segment.folds`, `repeats`, `group_by`, `seed`) in the split-file format of `classify split`.
TODO(lead): a `segment split` command would own this; the workflow's `pairs_split` rule then calls it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prompts import layout
from prompts.errors import run_cli, setup_logging
from prompts.fingerprint import settings_part
from prompts.layout import StudyLayout

from .params import DATA_KEYS, TINY, _fail, _keys, readable

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

    What common.smk and `study.guard` read for every task: `layout`, `split`, `tiny_model`,
    `warnings`, `study`, `sealed_folders()`, `params(rule)`.
    """

    study_file: Path
    out: Path
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

    # ------------------------------------------------------------------ output paths
    @property
    def layout(self) -> StudyLayout:
        return StudyLayout(self.out)

    @property
    def model_dir(self) -> Path:
        return self.layout.tiny_model_dir

    @property
    def controlnet_root(self) -> Path:
        return self.out / "controlnet"

    @property
    def synthetic_root(self) -> Path:
        return self.layout.synthetic_root

    @property
    def manifest(self) -> Path:
        return self.layout.manifest

    @property
    def realism_dir(self) -> Path:
        return self.layout.realism_dir

    @property
    def report_dir(self) -> Path:
        return self.layout.report_dir

    def controlnet_dir(self, fold) -> str:
        return str(layout.controlnet_dir(self.controlnet_root, int(fold)))

    def controlnet_dirs(self) -> list[str]:
        return [self.controlnet_dir(k) for k in self.folds]

    def controlnet_pattern(self) -> str:
        """CN/fold_{fold}/controlnet with the `fold` wildcard (the output of the per-fold `controlnet` rule)."""
        return str(self.controlnet_root / (layout.FOLD_PREFIX + "{fold}") / layout.CONTROLNET_DIR)

    def controlnet_seal(self, fold) -> str:
        return str(layout.seal_file(self.controlnet_dir(fold)))

    def all_tree_seals(self) -> list[str]:
        return [str(layout.seal_file(d)) for d in self.all_tree_dirs()]

    def targets(self) -> list[str]:
        """What `rule all` asks for: the published report and realism, and every seal (ControlNets, trees, both)."""
        return [str(self.report_dir), str(self.realism_dir)] + [str(layout.seal_file(d)) for d in self.sealed_folders()]

    def sealed_folders(self) -> list[str]:
        """Every folder output with a seal: ControlNets, synthetic trees, the published realism and report."""
        return self.controlnet_dirs() + self.all_tree_dirs() + [str(self.realism_dir), str(self.report_dir)]

    def params(self, rule: str) -> dict:
        """The rule's `params`: one readable `section.key=value` per result-changing setting (see `study.plan.Plan.params`)."""
        return {name: (lambda wildcards, text=text: text) for name, text in self.settings[rule].items()}

    def tree_dir(self, fold, tree: str) -> str:
        return str(layout.fold_root(self.synthetic_root, int(fold)) / tree)

    def tree_pattern(self, tree: str) -> str:
        """SYN/fold_{fold}/<tree> with the `fold` wildcard (an output of the per-fold `pairs` rule)."""
        return str(self.synthetic_root / (layout.FOLD_PREFIX + "{fold}") / tree)

    def all_tree_dirs(self) -> list[str]:
        return [self.tree_dir(k, t) for k in self.folds for t in self.trees]

    def staging_dir(self, fold) -> Path:
        """A pairs job's own --synthetic root; its finished trees are renamed into SYN/fold_<k>/."""
        return self.out / ".pairs" / layout.fold_name(int(fold))

    @property
    def aside_root(self) -> Path:
        """Where synthetic trees of earlier settings go (a tree no longer planned would still be read by `segment cv`)."""
        return self.out / ".aside"

    def staged_tree_dir(self, fold, tree: str) -> str:
        """Where the pairs job of `fold` writes `tree` in its staging root (renamed to `tree_dir` when finished)."""
        return str(layout.fold_root(self.staging_dir(fold), int(fold)) / tree)


def resolve(study, study_file: Path) -> SegPlan:
    """The plan of a validated segmentation study; bad input raises `prompts.errors.UserError` (one line)."""
    from prompts.errors import UserError
    from prompts.pairs import read_pairs

    where = str(study_file)
    if not study.study.output:
        raise UserError(f"{where}: study.output is missing: name the folder of the study's outputs (relative to the study file)")
    if not study.data.data:
        raise UserError(f"{where}: data.data is missing: name the folder of image-mask pairs (relative to the study file)")
    out, data = Path(study.study.output).resolve(), Path(study.data.data).resolve()
    if out == data or data in out.parents:
        raise UserError(f"{where}: study.output {out} is inside the data folder {data}; outputs never go into the data folder")
    cn, seg = study.controlnet, study.segment
    model_name = cn.model or study.lora.model or study.generate.model
    if not model_name:
        raise UserError(f"{where}: controlnet.model is missing: give a diffusers folder, a .safetensors file, a hub id, "
                        "or `tiny` (the offline smoke model)")
    _check_mixes(seg.mixes, where)
    pairs = read_pairs(data)
    if not pairs:
        raise UserError(f"{where}: data.data {data} holds no image-mask pairs; expected {data}/images/ + {data}/masks/ "
                        "or Cellpose's name.tif + name_masks.tif")
    trees = ([layout.pairs_tree_name(None)] if cn.augment else []) + [layout.pairs_tree_name(d) for d in cn.densities]
    if not trees or cn.count == 0:
        raise UserError(f"{where}: controlnet makes no synthetic pairs (augment: false, no densities, or count: 0); "
                        "set controlnet.augment, controlnet.densities or controlnet.count")
    split_given = bool(study.data.split)
    split = Path(study.data.split).resolve() if split_given else StudyLayout(out).split_file
    n_folds = len(_read_split(split, data, pairs).folds) if split_given else seg.folds * seg.repeats
    tiny = model_name == TINY
    model = str(StudyLayout(out).tiny_model_dir) if tiny else model_name
    plan = SegPlan(study_file=study_file, out=out, data=data,
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


def _check_mixes(mixes, where: str) -> None:
    """segment.mixes as `segment cv` reads them (the segment room's grammar: real, real+P, synthetic)."""
    from prompts.errors import UserError
    from segment.mixes import parse_mixes

    try:
        parse_mixes(mixes)
    except UserError as err:
        raise UserError(f"{where}: segment.mixes: {err}") from None


def rule_settings(study, model_name: str) -> dict[str, dict[str, str]]:
    """{rule: {param name: "section.key=value"}}: the result-changing settings each rule's command reads."""
    from prompts.schema.controlnet import GENERATE_KEYS, TRAIN_KEYS

    cn, seg = study.controlnet, study.segment
    model = {"model": model_name, "model_config": cn.model_config, "lora": cn.lora}
    train_keys = [k for k in TRAIN_KEYS if k not in JOB_KEYS]
    generate_keys = [k for k in GENERATE_KEYS if k not in JOB_KEYS]
    data = readable("data", _keys(study.data, DATA_KEYS))  # the reading rule, as for classification: every step follows it
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
    from prompts.pairs import read_pairs
    from prompts.splits import write_split
    from segment.folds import make_split, pairs_dataset

    if not data_cfg.data:
        raise UserError("--data is missing: give the folder of image-mask pairs")
    output = Path(output)
    check_output_dir(output.parent, data=data_cfg.data, flag="--output")
    root = Path(data_cfg.data)
    pairs = read_pairs(root)
    if not pairs:
        raise UserError(f"{root} holds no image-mask pairs; expected {root}/images/ + {root}/masks/ or Cellpose's name.tif + name_masks.tif")
    split = make_split(pairs_dataset(root, pairs), seg.folds, seg.repeats, seg.group_by, seg.seed)
    write_split(output, split)
    return output


# ---------------------------------------------------------------------- `set-aside`: trees of earlier settings


def set_aside_stale_trees(plan: SegPlan, fold: int, stamp: str) -> list[Path]:
    """Move SYN/fold_<k>/<tree>/ folders of trees the study no longer plans to OUT/.aside/<stamp>/fold_<k>/.

    `segment cv` reads every tree under SYN, so a tree of earlier settings (another density) would
    enter the CV. Only folders `controlnet generate` wrote (their fingerprint.json names the tree) are
    moved; anything else there is a UserError naming it. Returns the new places.
    """
    from prompts import fingerprint
    from prompts.errors import UserError

    fold_dir = layout.fold_root(plan.synthetic_root, int(fold))
    if not fold_dir.is_dir():
        return []
    moved = []
    for child in sorted(fold_dir.iterdir()):
        if child.name in plan.trees or child.name.startswith("."):
            continue
        record = fingerprint.read(child / layout.FINGERPRINT_FILE) if child.is_dir() else None
        if not record or record.get("tree") != child.name:
            raise UserError(f"{child} is not a tree of synthetic pairs the workflow wrote and `segment cv` would read it; "
                            f"move it out of {fold_dir}")
        target = plan.aside_root / stamp / layout.fold_name(int(fold)) / child.name
        target.parent.mkdir(parents=True, exist_ok=True)
        child.rename(target)
        moved.append(target)
    return moved


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
    p = sub.add_parser("set-aside", help="move a fold's synthetic trees that the study no longer plans out of OUT/synthetic/",
                       description="Trees of earlier settings (e.g. another density) go to OUT/.aside/, so `segment cv` reads only "
                       "the planned trees.")
    add_config_flag(p)
    p.add_argument("--fold", type=int, required=True, help="the fold index K")
    p.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "set-aside":
        import time

        from prompts.config import load_study
        from prompts.errors import UserError

        if not args.config:
            raise UserError("--config is missing: give the study file")
        study_file = Path(args.config).resolve()
        for path in set_aside_stale_trees(resolve(load_study(study_file), study_file), args.fold, time.strftime("%Y%m%d-%H%M%S")):
            print(f"moved aside: {path}")
        return
    study = read_settings(args, "segment split", ("data", "segment"))
    print(write_pairs_split(study.data, study.segment, args.output))


def load_or_exit(study, study_file: Path) -> SegPlan:
    """`resolve`, with a UserError printed as one line and exit status 2 (the workflow's start)."""
    from prompts.errors import UserError

    try:
        return resolve(study, study_file)
    except UserError as err:
        _fail([str(err)])


if __name__ == "__main__":
    main()
