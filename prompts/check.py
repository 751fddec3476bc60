"""The one check of a whole study, before any job: `python -m prompts check` and the workflow call it.

Every value a job will use is checked here, once, so that a typo fails in seconds with one line,
not in the last job after hours of LoRA training: the schema (keys, types, ranges), the keys the
workflow needs, the output folder (not inside the data, not an existing file), every file the study
names (models given as paths, weights, templates, split, blind key and answers, prompts file),
the mix names, the template class keys, `group_by` and the fold count against the smallest class.
A segmentation study (`study.task: segmentation`) is checked for its own values instead: readable
image-mask pairs, the fold count against the pairs, synthetic pairs planned (its mix names are
checked by `study.segmentation`, which may read the segment room).

    check_file(path)                  -> list of error lines ([] when the study can run)
    check_mapping(raw, study_file)    -> (Study or None, list of error lines)   (Snakemake's merged config)
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import KEYWORDS, Study, build_study, field_help, missing_required
from .errors import UserError

WORKFLOW = "workflow"
SEGMENTATION = "segmentation"
CLASSIFICATION_ONLY = ("lora.",)  # required keys a segmentation study does not need (its model: controlnet.model)
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


def check_study(study: Study, study_file) -> list[str]:
    """Every error of a schema-valid study that its jobs would meet, one line each, prefixed with the file."""
    where = f"{study_file}: "
    segmentation = study.study.task == SEGMENTATION
    missing = [key for key in missing_required(study, WORKFLOW) if not (segmentation and key.startswith(CLASSIFICATION_ONLY))]
    errors = [f"{where}{key} is missing: {field_help(key)}" for key in missing]
    if errors:
        return errors
    errors += _reading(study, where)
    if errors:
        return errors
    errors += [where + e for e in _paths(study)]
    if errors:
        return errors
    errors += [where + e for e in (_segmentation_values(study) if segmentation else _values(study))]
    return errors


def _paths(study: Study) -> list[str]:
    errors = []
    out, data = Path(study.study.output).resolve(), Path(study.data.data).resolve()
    if not data.is_dir():
        errors.append(f"data.data {study.data.data} is not a folder; name the folder of the images")
    if out == data or data in out.parents:
        errors.append(f"study.output {out} is inside the data folder {data}; outputs never go into the data folder")
    elif out.exists() and not out.is_dir():
        errors.append(f"study.output {out} is an existing file; name a folder for the study's outputs")
    if study.lora.per == "all" and study.study.task != SEGMENTATION:
        errors.append("lora.per: all is not run by the workflow (generate samples per class): use class or cell_line_class")
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
    from .splits import check_foldable, read_split
    from .templates import load_templates

    errors = []
    try:
        parse_mixes(study.classify.mixes)
    except UserError as err:
        errors.append(f"classify.mixes: {err}".replace("classify.mixes: --mixes ", "classify.mixes: "))
    try:
        dataset = read_dataset(study.data.data, skip_bad_images=study.data.skip_bad_images)
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
    from .pairs import read_pairs
    from .splits import read_split

    data, cn, seg = Path(study.data.data), study.controlnet, study.segment
    errors = []
    if not (cn.augment or cn.densities) or cn.count == 0:
        errors.append("controlnet makes no synthetic pairs (augment: false, no densities, or count: 0); "
                      "set controlnet.augment, controlnet.densities or controlnet.count")
    try:
        pairs = read_pairs(data)
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


def _check_minority(study: Study, classes) -> None:
    m = study.classify.minority_class
    if m is not None and m not in classes:
        raise UserError(f"classify.minority_class {m!r} is no class of the data (classes: {', '.join(classes)})")


def _as_keys(message: str) -> str:
    """A command's flag names (--folds) read as the study keys the user wrote (classify.folds)."""
    for flag, key in (("--folds", "classify.folds"), ("--group-by", "classify.group_by"), ("--repeats", "classify.repeats")):
        message = message.replace(flag, key)
    return message
