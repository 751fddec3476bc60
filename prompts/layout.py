"""Every on-disk name of the study, written once; every writer and reader calls these.

    LoRAs       LORA_OUT/[fold_<k>/]<group>/pytorch_lora_weights.safetensors   (diffusers/peft keys)
                LORA_OUT/[fold_<k>/]<group>/<group>.safetensors                 (kohya / AUTOMATIC1111)
                LORA_OUT/[fold_<k>/]<group>/config.yaml, loss.csv, stats.json    (+ .work/ while training)
    synthetic   SYN/[fold_<k>/]w<weight>/[<cell_line>/]<class>/<name>.png       (+ SYN/manifest.jsonl)
    ControlNets CN_OUT/[fold_<k>/]controlnet/diffusion_pytorch_model.safetensors + config.json (diffusers)
    pairs       SYN/[fold_<k>/]<tree>/images/<name>.png + masks/<name>.png (+ SYN/manifest.jsonl);
                <tree> is `aug` (augmented training masks) or `density<X>` (X cells per 100x100 px)
    CV          OUT/report.md, report.html, results.csv, results.json, split.json, runs/<tree>/<mix>/fold_<k>.json
    realism     OUT/realism.json, realism.md
    any output  fingerprint.json: what determined it (see prompts/fingerprint.py)
                cellsynth-outputs.json: the names a command wrote there (only those are ever replaced)
    a study     StudyLayout(OUT): every path of a workflow study's output folder (below)

`<group>` is the class, or `<cell_line>__<class>` for per-(cell line, class) LoRAs.
Labels and cell lines become path parts only after `check_name`.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .errors import UserError

FOLD_PREFIX = "fold_"
GROUP_SEP = "__"
LORA_DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
MANIFEST_FILE = "manifest.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
OUTPUTS_FILE = "cellsynth-outputs.json"  # in an output folder: the names its commands wrote (prompts.fingerprint.claim)
SPLIT_FILE = "split.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
FOLDS_CSV = "folds.csv"  # classify cv: one row per (tree, mix, fold)
REALISM_JSON = "realism.json"
REALISM_MD = "realism.md"
RUNS_DIR = "runs"
# `lora train`'s own names: LORA_OUT/.work/[fold_<k>/]<group>/{checkpoints/checkpoint-<update>/,tensorboard/} while a
# group trains; LORA_OUT/[fold_<k>/]<group>/{config.yaml,loss.csv,stats.json,tensorboard/,validation/} once finished
LORA_WORK_DIR = ".work"
LORA_CHECKPOINTS_DIR = "checkpoints"
LORA_CHECKPOINT_PREFIX = "checkpoint-"
LORA_TRAIN_STATE_FILE = "train_state.json"  # written last into a checkpoint: its presence marks the checkpoint complete
LORA_CONFIG_FILE = "config.yaml"
LORA_LOSS_FILE = "loss.csv"
LORA_STATS_FILE = "stats.json"
LORA_TENSORBOARD_DIR = "tensorboard"
LORA_VALIDATION_DIR = "validation"
TINY_MODEL_MARKER = "cellsynth_tiny_model.txt"  # in the tiny random Stable Diffusion's folder: a smoke model
# The blind test (`classify blind-test` writes the page and key, `blind-score` the scores).
BLIND_PAGE_HTML = "blind_test.html"
BLIND_KEY_FILE = "key.json"
BLIND_ANSWERS_FILE = "answers.json"  # the name the page downloads
BLIND_SCORES_JSON = "blind_scores.json"
BLIND_SCORES_CSV = "blind_scores.csv"
BLIND_SUMMARY_MD = "blind_summary.md"
DROPPED_FILE = "dropped.json"  # SYN/dropped.json: outputs of earlier settings the workflow moved aside (the report shows it)

_FOLD = re.compile(r"^fold_(\d+)$")
_MAX_NAME_BYTES = 200  # file systems allow 255; leave room for suffixes


# --------------------------------------------------------------------------- names from user input

def check_name(value: str, what: str = "label") -> str:
    """`value` if it is safe as one folder name, else a one-line UserError naming it and the rule.

    Rule: not empty, not `.` or `..`, no `/` or `\\`, no control characters, does not start with `.`
    (hidden folders are not read back), no surrounding spaces, at most 200 bytes in UTF-8.
    """
    rule = ("one folder name: not empty, no '/' or '\\', not starting with '.', no control characters, "
            "no leading or trailing spaces, at most 200 bytes")
    bad = (
        not isinstance(value, str)
        or not value
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or value != value.strip()
        or any(unicodedata.category(c) == "Cc" for c in value)
        or len(value.encode("utf-8")) > _MAX_NAME_BYTES
    )
    if bad:
        raise UserError(f"{what} {value!r} cannot be used as a folder name; a {what} must be {rule}")
    return value


def group_name(label: str, cell_line: str | None = None) -> str:
    """The LoRA group: the class, or `<cell_line>__<class>`."""
    return f"{cell_line}{GROUP_SEP}{label}" if cell_line else label


def lora_groups(records, per: str) -> dict[str, list]:
    """The one rule that forms LoRA groups: {group: its records}, sorted by group name.

    per: "class" (group = the class), "cell_line_class" (`<cell_line>__<class>`) or "all" (one group "all").
    records: anything with `.label` and `.cell_line`; labels and cell lines are checked as folder names.
    """
    groups: dict[str, list] = {}
    for r in records:
        if per == "all":
            key = "all"
        else:
            cell_line = check_name(r.cell_line, "cell line") if per == "cell_line_class" else None
            key = group_name(check_name(r.label, "class"), cell_line)
        groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items()))


def parse_group_name(name: str) -> tuple[str, str | None]:
    """(class, cell line or None) of a group folder name."""
    if GROUP_SEP in name:
        cell_line, label = name.split(GROUP_SEP, 1)
        return label, cell_line
    return name, None


# --------------------------------------------------------------------------- folds

def fold_name(k: int) -> str:
    return f"{FOLD_PREFIX}{int(k)}"


def parse_fold_name(name: str) -> int | None:
    m = _FOLD.match(name)
    return int(m.group(1)) if m else None


def fold_root(root, fold: int | None) -> Path:
    """ROOT/fold_<k>, or ROOT itself without folds."""
    root = Path(root)
    return root if fold is None else root / fold_name(fold)


# --------------------------------------------------------------------------- LoRA folders

def lora_dir(root, fold: int | None, group: str) -> Path:
    return fold_root(root, fold) / group


def lora_kohya_file(group: str) -> str:
    return f"{group}.safetensors"


# --------------------------------------------------------------------------- synthetic trees

def weight_dir_name(weight: float) -> str:
    """`w` + the shortest repr of the float that reads back exactly: w1.0, w0.8, w1e-05, w-0.5."""
    w = float(weight) + 0.0  # -0.0 -> 0.0
    if not math.isfinite(w):
        raise UserError(f"LoRA weight {weight!r} is not a finite number")
    return f"w{w!r}"


def parse_weight_dir(name: str) -> float | None:
    """The weight of a folder named by `weight_dir_name` (any finite float after `w`), else None."""
    if not name.startswith("w"):
        return None
    try:
        w = float(name[1:])
    except ValueError:
        return None
    return w + 0.0 if math.isfinite(w) and name[1:].strip() == name[1:] else None


def synthetic_class_dir(root, fold: int | None, weight: float, label: str, cell_line: str | None = None) -> Path:
    """SYN/[fold_<k>/]w<weight>/[<cell_line>/]<class>."""
    d = fold_root(root, fold) / weight_dir_name(weight)
    return (d / cell_line / label) if cell_line else d / label


# --------------------------------------------------------------------------- ControlNets and image–mask pairs

CONTROLNET_DIR = "controlnet"
AUGMENT_TREE = "aug"
DENSITY_PREFIX = "density"


def controlnet_dir(root, fold: int | None) -> Path:
    """CN_OUT/[fold_<k>/]controlnet: one diffusers ControlNet folder per fold."""
    return fold_root(root, fold) / CONTROLNET_DIR


def pairs_tree_name(density: float | None) -> str:
    """`aug` (no density: augmented single training masks) or `density<X>` with X the shortest repr: density2.5."""
    if density is None:
        return AUGMENT_TREE
    d = float(density) + 0.0
    if not math.isfinite(d) or d <= 0:
        raise UserError(f"density {density!r} must be a positive number of cells per 100x100 px")
    return f"{DENSITY_PREFIX}{d!r}"


def parse_pairs_tree(name: str) -> float | None | bool:
    """The density of a tree named by `pairs_tree_name` (None for `aug`), or False when it is no pairs tree."""
    if name == AUGMENT_TREE:
        return None
    if not name.startswith(DENSITY_PREFIX):
        return False
    try:
        d = float(name[len(DENSITY_PREFIX):])
    except ValueError:
        return False
    return d if math.isfinite(d) and d > 0 and name == pairs_tree_name(d) else False


# --------------------------------------------------------------------------- fractions of a class

def count_of_fraction(n: int, fraction) -> int:
    """round-half-up(fraction x n), exact on the decimal written: 0.25 x 6 = 2 (1.5 up), 0.1 x 110 = 11.

    The one rounding rule for "P % of a class" (`generate --fraction`, `classify` mixes real+P):
    pass P/100 as `Fraction(P, 100)` or the decimal fraction.
    """
    f = fraction if isinstance(fraction, Fraction) else Fraction(str(fraction))
    return int(math.floor(f * int(n) + Fraction(1, 2)))


# --------------------------------------------------------------------------- a workflow study's output folder

def dropped_file(synthetic_root) -> Path:
    """SYN/dropped.json: what the workflow moved aside because the current study no longer defines it.

    `{"version": 1, "dropped": [{"kind": "synthetic tree" | "LoRA", "path": relative to OUT,
    "moved_to": relative to OUT, "reason": str, "time": ISO UTC}]}`; written by the workflow, read by the report.
    """
    return Path(synthetic_root) / DROPPED_FILE


def seal_file(folder) -> Path:
    """The checksum file of a workflow folder output: `PARENT/.<name>.sha256` beside it (hidden: never read as data)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.sha256"


@dataclass(frozen=True)
class StudyLayout:
    """Every path of a workflow study under its output folder OUT (absolute when OUT is).

        OUT/study.yaml                     the merged, validated study every job reads (--config)
        OUT/folds.json                     the split (unless data.split names the user's file)
        OUT/templates.yaml                 the default prompt templates (unless data.templates names the user's)
        OUT/models/tiny-sd/                `lora.model: tiny`
        OUT/models/classifier.weights.h5   `classify.weights: calibrated`
        OUT/lora/fold_<k>/<group>/         one LoRA per fold and group (+ .<group>.sha256 beside it)
        OUT/synthetic/fold_<k>/w<weight>/  one tree per fold and LoRA weight (+ .w<weight>.sha256)
        OUT/synthetic/manifest.jsonl, dropped.json
        OUT/controlnet/fold_<k>/controlnet/  one ControlNet per fold (segmentation; + .controlnet.sha256)
        OUT/synthetic/fold_<k>/<tree>/     one tree of image-mask pairs per fold (segmentation: aug, density<X>)
        OUT/regimes/<regime>/              one phenotyping regime alone (`phenotype cv`; + .<regime>.sha256);
                                           the baseline's holds the feature cache every phenotyping job reads
        OUT/realism/, OUT/report/          published from OUT/.stage/ only when their job succeeded
        OUT/logs/<rule>[/fold_<k>]/<name>.log
        OUT/dropped/<time>/                outputs of earlier settings, moved aside (never deleted)
        OUT/.study.lock                    held by the one run on this output (host, pid, start)
        OUT/.stage/, OUT/.generate/, OUT/.pairs/   the jobs' own working folders (hidden; see `working_dirs`)

    Every folder the workflow writes records what it wrote (`OUTPUTS_FILE`, at every depth, see
    study.outputs.claim_tree); a file no record lists is the user's and is never deleted or replaced.
    """

    out: Path

    STUDY_FILE = "study.yaml"
    SPLIT_FILE = "folds.json"
    LOCK_FILE = ".study.lock"

    @property
    def study_file(self) -> Path:
        return self.out / self.STUDY_FILE

    @property
    def templates_file(self) -> Path:
        """OUT/templates.yaml: the toolkit's default templates, copied in when data.templates names none."""
        return self.out / "templates.yaml"

    @property
    def lock_file(self) -> Path:
        return self.out / self.LOCK_FILE

    @property
    def split_file(self) -> Path:
        return self.out / self.SPLIT_FILE

    @property
    def models_dir(self) -> Path:
        return self.out / "models"

    @property
    def tiny_model_dir(self) -> Path:
        return self.models_dir / "tiny-sd"

    @property
    def calibrated_weights(self) -> Path:
        return self.models_dir / "classifier.weights.h5"

    @property
    def lora_root(self) -> Path:
        return self.out / "lora"

    @property
    def synthetic_root(self) -> Path:
        return self.out / "synthetic"

    @property
    def manifest(self) -> Path:
        return self.synthetic_root / MANIFEST_FILE

    @property
    def dropped_file(self) -> Path:
        return dropped_file(self.synthetic_root)

    @property
    def dropped_root(self) -> Path:
        return self.out / "dropped"

    @property
    def realism_dir(self) -> Path:
        return self.out / "realism"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    @property
    def stage_root(self) -> Path:
        """Where `realism` and `cv` write; their folder is published into OUT/ only when the job succeeded."""
        return self.out / ".stage"

    def staged(self, final: Path) -> Path:
        return self.stage_root / Path(final).name

    @property
    def generate_staging_root(self) -> Path:
        return self.out / ".generate"

    def generate_staging(self, fold: int, weight_dir: str) -> Path:
        """A generation job's own output root; its finished tree is renamed into `synthetic_tree`."""
        return self.generate_staging_root / f"{fold_name(int(fold))}_{weight_dir}"

    @property
    def pairs_staging_root(self) -> Path:
        return self.out / ".pairs"

    def pairs_staging(self, fold: int) -> Path:
        """A segmentation pairs job's own --synthetic root; its finished trees are renamed into `pairs_tree`."""
        return self.pairs_staging_root / fold_name(int(fold))

    def staged_pairs_tree(self, fold: int, tree: str) -> Path:
        """Where the pairs job of `fold` writes `tree` in its staging root (renamed to `pairs_tree` when finished)."""
        return fold_root(self.pairs_staging(fold), int(fold)) / tree

    @property
    def working_dirs(self) -> list[Path]:
        """The jobs' own hidden working folders: replaced by the toolkit as its jobs need (not user space)."""
        return [self.stage_root, self.generate_staging_root, self.pairs_staging_root]

    @property
    def controlnet_root(self) -> Path:
        return self.out / "controlnet"

    def controlnet_dir(self, fold: int) -> Path:
        return controlnet_dir(self.controlnet_root, int(fold))

    def pairs_tree(self, fold: int, tree: str) -> Path:
        return fold_root(self.synthetic_root, int(fold)) / tree

    @property
    def logs_dir(self) -> Path:
        return self.out / "logs"

    def lora_dir(self, fold: int, group: str) -> Path:
        return lora_dir(self.lora_root, int(fold), group)

    def synthetic_tree(self, fold: int, weight_dir: str) -> Path:
        return fold_root(self.synthetic_root, int(fold)) / weight_dir

    @property
    def regimes_root(self) -> Path:
        """OUT/regimes/: one folder per phenotyping regime (`study.task: phenotyping`)."""
        return self.out / "regimes"

    def regime_dir(self, regime: str) -> Path:
        """OUT/regimes/<regime>/: `phenotype cv` of that one regime (its report, results and overlays)."""
        return self.regimes_root / regime

    @property
    def crops_root(self) -> Path:
        """OUT/crops/: one `fold_<k>/` folder per fold of a phenotyping study's training crops (`phenotype crops`),
        the data folder of that fold's LoRAs (one per cell type)."""
        return self.out / "crops"

    def crops_dir(self, fold: int) -> Path:
        return fold_root(self.crops_root, int(fold))

    @property
    def segmented_root(self) -> Path:
        """OUT/segmented/: one `fold_<k>/` per fold of a phenotyping study with `phenotype.segmentation` unet or
        stardist: its lists (pairs/, `phenotype pairs`) and its test images' predicted masks (masks/, `segment predict`)."""
        return self.out / "segmented"

    def segmented_dir(self, fold: int) -> Path:
        return fold_root(self.segmented_root, int(fold))

    def lora_fold_dir(self, fold: int) -> Path:
        """OUT/lora/fold_<k>/: every LoRA of one fold (a phenotyping study's job trains one per type in one go)."""
        return fold_root(self.lora_root, int(fold))

    def feature_cache(self, baseline: str) -> Path:
        """The per-cell feature cache of a phenotyping study: inside the baseline regime's folder, whose job
        computes every cell's features once; every other phenotyping job reads it and adds nothing."""
        return self.regime_dir(baseline) / "cache"

    # Snakemake patterns of the same paths ({fold}, {group}, {weight}, {regime} wildcards).
    def regime_pattern(self) -> str:
        return f"{self.regimes_root}/{{regime}}"

    def crops_pattern(self) -> str:
        return f"{self.crops_root}/{FOLD_PREFIX}{{fold}}"

    def segmented_pattern(self) -> str:
        return f"{self.segmented_root}/{FOLD_PREFIX}{{fold}}"

    def lora_fold_pattern(self) -> str:
        return f"{self.lora_root}/{FOLD_PREFIX}{{fold}}"

    def lora_pattern(self) -> str:
        return f"{self.lora_root}/{FOLD_PREFIX}{{fold}}/{{group}}"

    def synthetic_pattern(self) -> str:
        return f"{self.synthetic_root}/{FOLD_PREFIX}{{fold}}/{{weight}}"

    def controlnet_pattern(self) -> str:
        return f"{self.controlnet_root}/{FOLD_PREFIX}{{fold}}/{CONTROLNET_DIR}"

    def pairs_tree_pattern(self, tree: str) -> str:
        return f"{self.synthetic_root}/{FOLD_PREFIX}{{fold}}/{tree}"

    def log(self, rule: str, *parts: str) -> str:
        """OUT/logs/<rule>[/<part>...].log (parts may hold Snakemake wildcards)."""
        return str(self.logs_dir / rule / "/".join(parts)) + ".log" if parts else str(self.logs_dir / f"{rule}.log")
