"""The one check of a whole study, before any job: `python -m prompts check` and the workflow call it.

Every value a job will use is checked here, once, so that a typo fails in seconds with one line,
not in the last job after hours of LoRA training: the schema (keys, types, ranges), the keys the
workflow needs, the output folder (not inside the data, not an existing file), every file the study
names (models given as paths, weights, templates, split, blind key and answers, prompts file),
the mix names, the template class keys, `group_by` and the fold count against the smallest class.
A segmentation study (`study.task: segmentation`) is checked for its own values instead: readable
image-mask pairs, the fold count against the pairs, its mix names, synthetic pairs planned, a base model.
Which values a task checks is written once, in the task registry `TASKS` below (`register` adds a
task; `study/tasks.py` is the workflow's side of the same registry): nothing else branches on the task.
Last, for every task, the reading rule against the workflow's commands and the headers of the data's
lab files (`lab_file_headers`: channels, z, t, scenes, sizes; no pixel decoded).

    check_file(path)                  -> list of error lines ([] when the study can run)
    check_mapping(raw, study_file)    -> (Study or None, list of error lines)   (Snakemake's merged config)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import KEYWORDS, Study, build_study, field_help, missing_required
from .errors import UserError

WORKFLOW = "workflow"
# Path keys a study's jobs read: when set, the file or folder must exist (models may be hub ids).
INPUT_PATHS = (
    ("data", "templates"), ("data", "split"), ("lora", "model"), ("lora", "model_config"), ("generate", "model"),
    ("generate", "model_config"), ("generate", "prompts_file"), ("classify", "weights"), ("classify", "blind"),
    ("blind", "key"), ("blind", "answers"),
)


def check_file(path) -> list[str]:
    """Every error of a study file (read, schema, and what its jobs will use), one line each."""
    from .files import read_yaml_mapping

    path = Path(path).resolve()  # named as the workflow names it: the same line from both
    if path.is_dir():
        return [f"study file {path} is a folder; give the study's YAML file"]
    try:
        raw = read_yaml_mapping(path, "study file")
    except UserError as err:
        return [str(err)]
    return check_mapping(raw, path)[1]


def check_mapping(raw: dict, study_file) -> tuple[Study | None, list[str]]:
    """(the validated Study, []) or (None or a partial Study, every error line) for a study mapping."""
    study_file = Path(study_file)
    if not raw:
        return None, [f"study file {study_file} is empty; it needs at least study.output, data.data and lora.model "
                      "(see docs/tutorials/classification.md, The whole study as one command)"]
    errors: list[str] = []
    try:
        study = build_study(raw, study_file, errors)
    except UserError as err:
        return None, [str(err)]
    if errors:
        return study, errors
    return study, check_study(study, study_file)


def _reading(study: Study, where: str) -> list[str]:
    """The data section's reading rule, its keys together (z, t, percentiles): the rule every step applies."""
    from .normalize import from_section

    try:
        from_section(study.data)
    except UserError as err:
        return [str(err) if str(err).startswith(where) else where + str(err)]
    return []


@dataclass(frozen=True)
class TaskCheck:
    """The checks of one study task: its values against the data, and the workflow-required keys it does not need."""

    values: Callable[[Study], list[str]]  # error lines (without the file prefix)
    not_required: tuple[str, ...] = ()  # prefixes of `required=("workflow",)` keys the task does without
    pixel_commands: tuple[str, ...] = ()  # the task's workflow commands that decode real images under the reading rule
    # (study, reading) -> [(image name relative to data.data, class or set)] of the images its jobs decode; None: not checked
    images: Callable | None = None


TASKS: dict[str, TaskCheck] = {}


def register(task: str, check: TaskCheck) -> TaskCheck:
    """Add (or replace) the checks of `task` (a value of study.task)."""
    TASKS[task] = check
    return check


def check_study(study: Study, study_file) -> list[str]:
    """Every error of a schema-valid study that its jobs would meet, one line each, prefixed with the file."""
    where = f"{study_file}: "
    task = TASKS.get(study.study.task)
    if task is None:  # a value the schema admits but no task registered: a toolkit error, said in one line
        return [f"{where}study.task {study.study.task} is not a registered task (known: {', '.join(TASKS)})"]
    missing = [key for key in missing_required(study, WORKFLOW) if not key.startswith(task.not_required)]
    errors = [f"{where}{key} is missing: {field_help(key)}" for key in missing]
    if errors:
        return errors
    errors += _reading(study, where)
    if errors:
        return errors
    errors += [where + e for e in _paths(study) + _bounds(study)]
    if errors:
        return errors
    errors += [where + e for e in task.values(study)]
    if errors:
        return errors
    return [where + e for e in lab_file_headers(study)]


def lab_file_headers(study: Study) -> list[str]:
    """The reading rule against the study's commands and the headers of its lab files, before any job.

    `percentile-dataset` with a command of the workflow that refuses it; `data.channels` (names and
    indices), `data.z`, `data.t` and scenes against what the files declare (no pixel decoded; every file
    of a folder of up to 200, else one per class and extension: `prompts.labcheck`). Each line is the
    one the command or the decoder would give in the first job.
    """
    from .labcheck import check_commands, check_lab_files
    from .normalize import from_section

    task = TASKS[study.study.task]
    reading = from_section(study.data)
    errors = check_commands(reading, task.pixel_commands, study.generate.init_images)
    if task.images is None:
        return errors
    try:
        items = task.images(study, reading)
    except UserError:
        return errors  # the data folder's own errors are said by the checks above
    return errors + check_lab_files(study.data.data, items, reading, study.data.skip_bad_images)


def _class_images(study: Study, reading) -> list[tuple[str, str]]:
    """(image name relative to data.data, class) of every image of a classification study."""
    from .dataset import list_images

    dataset = list_images(study.data.data, skip_bad_images=study.data.skip_bad_images, reading=reading)
    return [(r.path, r.label) for r in dataset.records]


def _pair_images(study: Study, reading) -> list[tuple[str, str]]:
    """(image name relative to data.data, set) of every image of an image-mask pair study."""
    from .pair_layouts import layout_of
    from .pairs import read_pairs

    return [(p.name, p.label or "") for p in read_pairs(Path(study.data.data), layout_of(study.data))]


def _bounds(study: Study) -> list[str]:
    """Values bounded by other values: the search's workers by its trials (the schema bounds each alone)."""
    s = study.search
    if s.workers > s.trials:
        return [f"search.workers {s.workers} is more than search.trials {s.trials} (a worker without a trial to run "
                f"only waits): use search.workers {s.trials} or fewer"]
    return []


def _paths(study: Study) -> list[str]:
    errors = []
    out, data = Path(study.study.output).resolve(), Path(study.data.data).resolve()
    if not data.is_dir():
        errors.append(f"data.data {study.data.data} is not a folder; name the folder of the images")
    if out == data or data in out.parents:
        errors.append(f"study.output {out} is inside the data folder {data}; outputs never go into the data folder")
    elif out.exists() and not out.is_dir():
        errors.append(f"study.output {out} is an existing file; name a folder for the study's outputs")
    for section, key in INPUT_PATHS:
        value = getattr(getattr(study, section), key)
        for v in value if isinstance(value, list) else [value]:
            if _missing(v):
                errors.append(f"{section}.{key} {v} does not exist; {_what_to_give(section, key)}")
    return errors


def _missing(value) -> bool:
    """A path value that names no file or folder (keywords such as `tiny`, URLs and hub ids `org/name` are not paths)."""
    if not isinstance(value, str) or not value or value in KEYWORDS or "://" in value:
        return False
    if not os.path.isabs(value):  # left relative by the loader: a hub id (org/name)
        return False
    return not os.path.exists(value)


def _what_to_give(section: str, key: str) -> str:
    if key in ("model", "model_config"):
        return "give a diffusers folder, a single-file .safetensors, a hub id (org/name), or tiny (the offline smoke model)"
    if key == "weights":
        return "give imagenet, calibrated, none, or an existing weights file (.weights.h5)"
    return "fix the path (relative paths are relative to the study file) or remove the key"


def _values(study: Study) -> list[str]:
    """Mixes, minority class, templates' class keys, group_by and folds against the data."""
    from .dataset import group_keys, read_dataset
    from .mixes import parse_mixes
    from .normalize import from_section
    from .splits import check_foldable, read_split
    from .templates import load_templates

    errors = []
    if study.lora.per == "all":
        errors.append("lora.per: all is not run by the workflow (generate samples per class): use class or cell_line_class")
    try:
        parse_mixes(study.classify.mixes)
    except UserError as err:
        errors.append(f"classify.mixes: {err}".replace("classify.mixes: --mixes ", "classify.mixes: "))
    try:
        dataset = read_dataset(study.data.data, skip_bad_images=study.data.skip_bad_images,
                               reading=from_section(study.data))  # the study's rule
    except UserError as err:
        return errors + [f"data.data: {err}"]
    checks = [
        lambda: load_templates(study.data.templates).check_classes(dataset.classes),
        lambda: _check_minority(study, dataset.classes),
    ]
    if study.data.split:
        checks.append(lambda: read_split(study.data.split, dataset))
    else:
        cls = study.classify
        checks.append(lambda: check_foldable(dataset, cls.folds, group_keys(dataset, cls.group_by)))
    for check in checks:
        try:
            check()
        except UserError as err:
            errors.append(_as_keys(str(err)))
    return errors


def _segmentation_values(study: Study) -> list[str]:
    """Pairs readable, synthetic pairs planned, folds (or the given split) against the pairs."""
    from .dataset import Dataset, Record
    from .mixes import SEGMENTATION, mixes_error
    from .pair_layouts import layout_of
    from .pairs import read_pairs
    from .splits import read_split

    data, cn, seg = Path(study.data.data), study.controlnet, study.segment
    errors = [e for e in [mixes_error("segment", seg.mixes, SEGMENTATION)] if e]
    if not (cn.model or study.lora.model or study.generate.model):
        errors.append("controlnet.model is missing: give a diffusers folder, a .safetensors file, a hub id, "
                      "or `tiny` (the offline smoke model)")
    if not (cn.augment or cn.densities) or cn.count == 0:
        errors.append("controlnet makes no synthetic pairs (augment: false, no densities, or count: 0); "
                      "set controlnet.augment, controlnet.densities or controlnet.count")
    try:
        pairs = read_pairs(data, layout_of(study.data))
    except UserError as err:
        return errors + [f"data.data: {err}"]
    if not pairs:
        return errors + [f"data.data {data} holds no image–mask pairs; expected {data}/images/ + {data}/masks/ "
                         "or Cellpose's name.tif + name_masks.tif"]
    if study.data.split:
        dataset = Dataset(data, [Record(p.name, p.label or "cells", group=p.label) for p in pairs], "pairs")
        try:
            read_split(study.data.split, dataset)
        except UserError as err:
            errors.append(str(err))
    elif seg.folds > len(pairs):
        errors.append(f"segment.folds {seg.folds} is more than the {len(pairs)} image–mask pairs in {data}; "
                      f"use segment.folds {max(2, len(pairs))} or fewer, or add pairs")
    return errors


register("classification", TaskCheck(_values, pixel_commands=("lora train", "generate", "classify realism", "classify cv"),
                                     images=_class_images))
register("segmentation", TaskCheck(_segmentation_values, not_required=("lora.",),  # its model: controlnet.model
                                   pixel_commands=("controlnet train", "segment realism", "segment cv"), images=_pair_images))


def synthetic_model_error(study: Study) -> str | None:
    """The one line for a phenotyping study whose `synthetic` regime has no diffusion model, or None (the check and
    the workflow's plan both give it)."""
    from .mixes import SYNTHETIC_REGIME

    if SYNTHETIC_REGIME in study.phenotype.regimes and not (study.lora.model or study.generate.model):
        return ("phenotype.regimes synthetic needs a diffusion model: set lora.model (a diffusers folder, a .safetensors "
                "file, a hub id, or tiny for an offline smoke run)")
    return None


def _phenotyping_values(study: Study) -> list[str]:
    """Regimes known (the workflow's same line), co-culture images present, and the fold count against them (the
    phenotype room checks its layouts at its first job)."""
    from .images import is_image_file
    from .mixes import phenotyping_error

    data, ph = Path(study.data.data), study.phenotype
    if problem := phenotyping_error(ph) or synthetic_model_error(study):
        return [problem]
    co = data / "co"
    if not co.is_dir():
        return [f"data.data {data} has no co/ folder; a phenotyping study needs co-culture images in {co}/ "
                "(images/ + masks/ + cell_types.csv, see docs/tutorials/phenotyping.md)"]
    images = co / "images" if (co / "images").is_dir() else co
    n = sum(1 for p in images.iterdir() if p.is_file() and is_image_file(p) and not p.stem.endswith("_masks"))
    if ph.folds > n:
        return [f"phenotype.folds {ph.folds} is more than the {n} co-culture images in {images}; "
                f"use phenotype.folds {max(2, n)} or fewer, or add images"]
    return []


register("phenotyping", TaskCheck(_phenotyping_values, not_required=("lora.",)))  # no diffusion model


def _check_minority(study: Study, classes) -> None:
    m = study.classify.minority_class
    if m is not None and m not in classes:
        raise UserError(f"classify.minority_class {m!r} is no class of the data (classes: {', '.join(classes)})")


def _as_keys(message: str) -> str:
    """A command's flag names (--folds) read as the study keys the user wrote (classify.folds)."""
    for flag, key in (("--folds", "classify.folds"), ("--group-by", "classify.group_by"), ("--repeats", "classify.repeats")):
        message = message.replace(flag, key)
    return message
