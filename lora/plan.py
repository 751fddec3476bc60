"""Planning `lora train`: every input checked and every job listed before anything is written.

A job is one LoRA: a group (class, cell line x class, or all) of one fold's training images (or of
all images). Each job has a fingerprint (`job_fingerprint`: settings, base model, images, captions,
split, templates), recorded in its checkpoints and its finished folder. `plan()` compares it with
what OUT holds: a finished folder with an equal fingerprint is kept, checkpoints with an equal one
are continued, anything else stops with one line saying what changed. Only folders `lora train`
wrote (a finished LoRA with its fingerprint; OUT/.work/) are ever replaced or deleted.

The sections come validated from the schema (ranges, multiples of 8, required keys), so only what
the schema cannot know is checked here: the data, the model, the split, what OUT already holds.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from prompts import fingerprint, layout
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.guard import check_output_dir
from prompts.images import fit_reading
from prompts.normalize import from_section
from prompts.splits import read_split
from prompts.templates import DEFAULT_TEMPLATES, load_templates

from .checkpoints import list_checkpoints, read_state

log = logging.getLogger("lora")


@dataclass
class LoraJob:
    """One LoRA to train: its images, their captions, and where it goes."""

    group: str  # class, <cell_line>__<class>, or "all"
    dataset: Dataset  # the training images (a fold's training part when a split is given)
    captions: list[str]  # one prompt per record, from the templates
    negative_prompt: str
    out_dir: Path  # OUT/[fold_<k>/]<group>
    work_dir: Path  # OUT/.work/[fold_<k>/]<group>
    fold: int | None = None  # index of the split's fold (an int; its folder is layout.fold_name(fold))
    triggers: dict[str, str] = field(default_factory=dict)  # trigger word of each (cell line,) class in the job
    fingerprint: dict = field(default_factory=dict)  # what determines this LoRA (job_fingerprint)
    finished: bool = False  # out_dir already holds this very LoRA (equal fingerprint): nothing to do
    checkpoints: list[Path] = field(default_factory=list)  # checkpoints to continue from, newest first
    restart: bool = False  # --resume auto found checkpoints of other inputs: the group starts over (drops its own work)
    reading: object = None  # prompts.normalize.Reading (percentile-dataset: levels of the fold's training images)

    @property
    def display_name(self) -> str:
        """The group as the user sees it in messages: `bad` or `fold_0/bad`."""
        return f"{layout.fold_name(self.fold)}/{self.group}" if self.fold is not None else self.group


def plan(settings, data_settings, resume: str | None = None) -> list[LoraJob]:
    """Check the inputs and list the jobs in order, each with its fingerprint and what to resume from.

    settings: the validated `lora` section; data_settings: the `data` section.
    Raises UserError before anything is written: bad data or model, an output folder inside the data,
    a group folder this tool did not write, a finished LoRA or a checkpoint made from other inputs.
    """
    out = check_output_dir(settings.output, data=data_settings.data, flag="--output")
    _check_combinations(settings, resume)
    from diffusion.model import check_model

    check_model(settings.model, settings.allow_pickle)
    study_reading = from_section(data_settings)  # the data section's rule, passed to every image read below
    dataset = read_dataset(data_settings.data, check_images=True, skip_bad_images=data_settings.skip_bad_images,
                           reading=study_reading)
    templates = load_templates(data_settings.templates)
    templates.check_classes(dataset.classes)
    every = dataset  # all classes: percentile-dataset takes its percentiles over the fold's whole training set
    dataset = dataset.select(classes=settings.classes or None, cell_lines=settings.cell_lines or None)
    if settings.per == "cell_line_class" and not dataset.cell_lines:
        raise UserError(f"--per cell_line_class: {dataset.root} has no cell lines; use DATA/<cell_line>/<class>/ or a cell_line column")
    jobs = []
    for fold, part, whole in _fold_parts(settings, data_settings, dataset, every, study_reading):
        reading = fit_reading([whole.abspath(r) for r in whole.records], study_reading)  # changes nothing unless percentile-dataset
        formed = layout.lora_groups(part.records, settings.per)
        _check_groups(settings.groups, formed, fold)
        for group, records in formed.items():
            if settings.groups and group not in settings.groups:
                continue
            sub = Dataset(part.root, records, part.source)
            prompts = [templates.for_group(r.label, r.cell_line if settings.per != "class" else None) for r in records]
            jobs.append(LoraJob(group, sub, [p.prompt for p in prompts], prompts[0].negative_prompt,
                                layout.lora_dir(out, fold, group), layout.lora_dir(out / layout.LORA_WORK_DIR, fold, group), fold,
                                triggers=dict(sorted({p.group: p.trigger for p in prompts}.items())), reading=reading))
        wanted = set(settings.classes) - {r.label for r in part.records}
        if wanted:
            where = layout.fold_name(fold) if fold is not None else "the data"
            raise UserError(f"class {sorted(wanted)[0]} has no training images in {where}; drop it from --classes")
    if resume not in (None, "latest", "auto") and len(jobs) != 1:
        raise UserError(f"--resume {resume}: a checkpoint path resumes one group; select it with --classes/--fold, or use --resume latest")
    for job in jobs:
        job.fingerprint = job_fingerprint(job, settings, data_settings)
        job.finished = check_group_folder(job, settings.overwrite)
        job.checkpoints = [] if job.finished or settings.overwrite else resumable_checkpoints(job, resume)
    return jobs


def _check_groups(wanted: list[str], formed: dict, fold: int | None) -> None:
    """--groups names only groups the data forms (in this fold)."""
    missing = sorted(set(wanted) - set(formed))
    if missing:
        where = layout.fold_name(fold) if fold is not None else "the data"
        raise UserError(f"--groups {missing[0]}: no such group in {where} (its groups: {', '.join(sorted(formed)[:8])}); "
                        "give folder names as `lora train` writes them")


def _check_combinations(settings, resume: str | None) -> None:
    """Settings that are valid one by one but not together, or not on this machine."""
    if settings.cache_latents and settings.random_crop:
        raise UserError("--cache-latents cannot be combined with --random-crop (each crop needs its own encoding); drop one")
    if resume is not None and settings.overwrite:
        raise UserError(f"--resume {resume} continues and --overwrite starts over; drop one of them")
    if settings.optimizer == "adamw8bit":
        import importlib.util

        import torch

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise UserError("--optimizer adamw8bit needs the bitsandbytes package and a CUDA GPU; use --optimizer adamw")


def _fold_parts(settings, data_settings, dataset: Dataset, every: Dataset, reading) -> list[tuple[int | None, Dataset, Dataset]]:
    """(fold index, its training images, its training images of every class) for each chosen fold of the split,
    or [(None, all images, every image)]."""
    if data_settings.split:
        if settings.fold is None:
            raise UserError("--split needs --fold K or --fold all")
        split = read_split(data_settings.split, read_dataset(data_settings.data, skip_bad_images=data_settings.skip_bad_images,
                                                             reading=reading))
        return [(f.index, dataset.select(paths=f.train), every.select(paths=f.train)) for f in split.select(settings.fold)]
    if settings.fold is not None:
        raise UserError(f"--fold {settings.fold} needs --split FILE (a split file from `python -m classify split`)")
    return [(None, dataset, every)]


def is_finished(out_dir: Path) -> bool:
    """A group folder this tool finished: the diffusers LoRA and the fingerprint (renamed into place whole)."""
    return (out_dir / layout.LORA_DIFFUSERS_FILE).is_file() and (out_dir / layout.FINGERPRINT_FILE).is_file()


def group_entries(group: str) -> set[str]:
    """The names `outputs.write_group` puts into a group folder; nothing else there is ours to delete."""
    return {layout.LORA_DIFFUSERS_FILE, layout.lora_kohya_file(group), layout.FINGERPRINT_FILE, layout.LORA_CONFIG_FILE,
            layout.LORA_LOSS_FILE, layout.LORA_STATS_FILE, layout.LORA_TENSORBOARD_DIR, layout.LORA_VALIDATION_DIR}


# --------------------------------------------------------------------------- fingerprints (resume and reuse)

def job_fingerprint(job: LoraJob, settings, data_settings) -> dict:
    """What determines this job's LoRA (prompts/fingerprint.py), plus the records other commands read.

    parts: `settings` (the lora section's fields marked as changing the result), `model` (content of
    the base model's weight and config files, and of --model-config), `images` (content of this job's
    training images), `captions` (the prompts it trains with), `split` and `templates` (the files'
    content). Top-level records: `images` {data-relative path: sha256} and `triggers` {group: trigger
    word}, which `generate` checks against a fold's test set and its prompts; `settings` {key: value},
    which names a changed setting in messages.
    """
    images = fingerprint.files_part([r.path for r in job.dataset.records], root=job.dataset.root)
    values = json.loads(json.dumps(fingerprint.settings_part(settings), default=str))  # as it reads back from the file
    parts = fingerprint.make(
        settings=values, model=[fingerprint.model_part(settings.model), fingerprint.model_part(settings.model_config)],
        images=images, captions=[job.captions, job.negative_prompt],
        split=fingerprint.file_sha256(data_settings.split) if data_settings.split else None,
        templates=fingerprint.file_sha256(data_settings.templates or DEFAULT_TEMPLATES),
        reading=fingerprint.reading_part(job.reading))
    return {**parts, "images": images, "triggers": job.triggers, "settings": values,
            "reading": fingerprint.reading_part(job.reading)}


def describe_changes(recorded: dict | None, current: dict) -> str:
    """'' when the fingerprints are equal, else what changed: 'settings (rank: 8 -> 4), split changed since'."""
    changed = fingerprint.diff(recorded, current)
    if not changed:
        return ""
    if "settings" in changed:
        old, new = recorded.get("settings") or {}, current.get("settings") or {}
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if keys:
            changed[changed.index("settings")] = "settings (" + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + ")"
    return ", ".join(changed) + " changed since"


def check_group_folder(job: LoraJob, overwrite: bool) -> bool:
    """Whether OUT/[fold_<k>/]<group>/ already holds this very LoRA; refuses what may not be replaced.

    Only a folder this tool finished (LoRA + fingerprint, nothing else in it) is ever replaced, and only
    with --overwrite; a folder with an equal fingerprint is reused; anything else there is the user's.
    """
    out = job.out_dir
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not is_finished(out):
        raise UserError(f"{out} exists and is not a LoRA folder written by `lora train` (no {layout.LORA_DIFFUSERS_FILE} "
                        f"with {layout.FINGERPRINT_FILE}); it is left untouched: move it away or choose another --output")
    changes = describe_changes(fingerprint.read(out / layout.FINGERPRINT_FILE), job.fingerprint)
    if not overwrite:
        if changes:
            raise UserError(f"{out} already holds a finished LoRA made from other inputs ({changes}); "
                            "pass --overwrite to replace it, or choose another --output")
        return True
    foreign = sorted(set(os.listdir(out)) - group_entries(job.group))
    if foreign:
        raise UserError(f"{out} holds files `lora train` did not write ({', '.join(foreign[:3])}); it is left untouched "
                        "(--overwrite replaces only what it wrote): move them away first")
    return False


def resumable_checkpoints(job: LoraJob, resume: str | None) -> list[Path]:
    """The checkpoints `job` continues from, newest first; each was made from this run's inputs.

    Without --resume and with --resume latest: the group's complete checkpoints in OUT/.work/. One whose
    fingerprint cannot be read is passed over, saying so; one made from other inputs stops the run, since
    only the user can say whether to restore those inputs or to start over (--overwrite). With --resume auto
    (the workflow's choice: a changed study file is the user's decision) the group starts over instead, saying so.
    """
    if resume not in (None, "latest", "auto"):
        ckpt = Path(resume)
        if read_state(ckpt) is None:
            raise UserError(f"--resume {ckpt}: not a complete checkpoint of `lora train` (no readable "
                            f"{layout.LORA_TRAIN_STATE_FILE}); give a checkpoint-N folder from OUT/.work/, or drop --resume")
        changes = describe_changes(fingerprint.read(ckpt / layout.FINGERPRINT_FILE), job.fingerprint)
        if changes:
            raise UserError(f"checkpoint {ckpt} was made from other inputs ({changes}); "
                            "resume with the inputs it was made from, or drop --resume to start over")
        return [ckpt]
    found, every = [], list_checkpoints(job.work_dir)
    for ckpt in every:
        recorded = fingerprint.read(ckpt / layout.FINGERPRINT_FILE)
        if read_state(ckpt) is None or recorded is None:
            log.warning("%s: checkpoint %s is unreadable (%s or %s); passed over", job.display_name, ckpt,
                        layout.LORA_TRAIN_STATE_FILE, layout.FINGERPRINT_FILE)
            continue
        changes = describe_changes(recorded, job.fingerprint)
        if changes and resume == "auto":
            log.warning("%s: checkpoint %s was made from other inputs (%s); starting the group over", job.display_name, ckpt, changes)
            job.restart = True
            return []
        if changes:
            raise UserError(f"checkpoint {ckpt} was made from other inputs ({changes}); run with the inputs it was made "
                            f"from to continue it, or pass --overwrite to start {job.display_name} over (drops its checkpoints)")
        found.append(ckpt)
    if every and not found:
        raise UserError(f"no checkpoint of {job.display_name} in {job.work_dir / layout.LORA_CHECKPOINTS_DIR} can be read; "
                        f"pass --overwrite to start {job.display_name} over (drops them)")
    return found
