"""What each synthetic tree was made from, and the checks across steps before it is made.

A synthetic tree is one `OUT/[fold_<k>/]w<weight>/` folder (`plan.tree_of`). Each records
`fingerprint.json` (`prompts.layout.FINGERPRINT_FILE`, `prompts.fingerprint`):

    {"version": 1,
     "parts": {"steps": .., "cfg": .., ..., "weight": .., "model": .., "loras": ..,
               "templates": .., "split": .., "prompts_file": .., "data_images": ..},   # digests
     "fold": k or null, "weight": w, "model": "<as given>",
     "images": {data-relative path: sha256}}   # the union of the tree's LoRAs' training images

Parts (one per setting, so that a refusal names exactly what changed):
- one part per field of the `generate` section marked as changing the result (named as the key), except
  those that choose *which* images a tree holds, not how each one looks (`SELECTION`): image i of a
  group has the same seed, prompt and start image whatever the count, the classes or the other
  weights, so a re-run that asks for more images, other classes or another weight fills the same
  trees in (`per` picks the groups, whose LoRAs `loras` records). The sampler is recorded by its
  canonical name.
- `weight`: the tree's LoRA weight; `model`: the base model's content (`fingerprint.model_part`);
  `loras`: {LoRA name: sha256 of its file} of the LoRAs the tree's images use;
- `templates`, `split`, `prompts_file`: the files' content (None when not used);
- `data_images`: content hashes of the real images the plan reads (the fold's training images, or
  all images without a split): they set the counts, the grayscale mode and the img2img starts.

`images` is present only when every LoRA of the tree has the record of `lora train`
(`fingerprint.json` beside the LoRA file, with `images`); `classify cv` checks it against its
split. A LoRA without that record (a kohya file from elsewhere) is used with a warning that it
cannot be checked, and the tree then carries no `images`.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from prompts import fingerprint
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, fold_name
from prompts.templates import DEFAULT_TEMPLATES

from .plan import ImageJob, tree_of

log = logging.getLogger("generate")

# generate settings that choose which images a tree holds (or which trees), not how any image looks;
# `per` chooses the groups, whose LoRAs the `loras` part records ('auto' and the mode it resolves to are one thing)
SELECTION = frozenset({"lora_weights", "fold", "classes", "cell_lines", "count", "fraction", "balance", "batch_size",
                       "overwrite", "output", "per"})


@dataclass
class Inputs:
    """Everything besides the jobs that determines the trees (built by the CLI from the study)."""

    data_root: Path
    model: str
    settings: dict  # the image settings: `image_settings(section)`
    templates: str | None = None  # None: the shipped default
    split: str | None = None
    prompts_file: str | None = None
    train: dict = field(default_factory=dict)  # fold index (None: no split) -> data-relative paths the plan reads
    test: dict = field(default_factory=dict)  # fold index -> data-relative test paths of the split
    reading: object = None  # prompts.normalize.Reading: the data section's rule (init images, grey check); every tree records it


def image_settings(section, sampler: str) -> dict:
    """The `generate` section's result-changing fields minus `SELECTION`, with the canonical sampler name."""
    part = {k: v for k, v in fingerprint.settings_part(section).items() if k not in SELECTION}
    if "sampler" in part:
        part["sampler"] = sampler
    return part


# ---------------------------------------------------------------- LoRA records (written by `lora train`)


def lora_record(path: str) -> dict | None:
    """The `lora train` fingerprint beside a LoRA file, when it has the `images` record; else None."""
    rec = fingerprint.read(Path(path).parent / FINGERPRINT_FILE)
    return rec if rec is not None and isinstance(rec.get("images"), dict) else None


def check_against_split(jobs: list[ImageJob], inputs: Inputs) -> None:
    """Refuse LoRAs trained on an image of the test set of the fold they would generate for.

    Compared by data-relative path and by content (sha256), so a renamed copy of a test image is
    caught too. A LoRA without a record gets one warning that it cannot be checked.
    """
    uses: dict[int, set[str]] = {}
    for j in jobs:
        if j.fold is not None:
            uses.setdefault(j.fold, set()).update(u.path for u in j.loras)
    for fold in sorted(uses):
        test = list(inputs.test.get(fold, ()))
        if not test:
            continue
        test_hashes = fingerprint.files_part(test, root=inputs.data_root)
        by_hash = {sha: p for p, sha in test_hashes.items()}
        for path in sorted(uses[fold]):
            rec = lora_record(path)
            if rec is None:
                continue  # warned once in `warn_unrecorded`
            seen = sorted(p if p in test_hashes else by_hash[sha] for p, sha in rec["images"].items()
                          if p in test_hashes or sha in by_hash)
            if seen:
                raise UserError(
                    f"LoRA {path} was trained on {len(seen)} test image(s) of {fold_name(fold)} of split "
                    f"{inputs.split} (e.g. {seen[0]}): it was trained with another split; train the LoRAs with this "
                    "split (`python -m lora train --split FILE --fold all`) or pass the split they were trained with"
                )


def warn_unrecorded(jobs: list[ImageJob], inputs: Inputs) -> list[str]:
    """With a split: warn once per LoRA file that has no `lora train` record (it cannot be checked against
    the test images); returns those files."""
    paths = sorted({u.path for j in jobs if inputs.test.get(j.fold) for u in j.loras})
    missing = [p for p in paths if lora_record(p) is None]
    for p in missing:
        log.warning("LoRA %s has no record of its training images (%s of `lora train`): it cannot be checked "
                    "against the split's test images", p, FINGERPRINT_FILE)
    return missing


def warn_triggers(jobs: list[ImageJob]) -> None:
    """Warn once per (LoRA, group) when the group's prompt lacks the trigger word that LoRA was trained with."""
    triggers = {}  # LoRA file -> {group: trigger word}
    for path in sorted({u.path for j in jobs for u in j.loras}):
        rec = lora_record(path) or {}
        triggers[path] = rec["triggers"] if isinstance(rec.get("triggers"), dict) else {}
    said = set()
    for j in jobs:
        for u in j.loras:
            trigger = triggers[u.path].get(j.group)
            if not trigger or (u.path, j.group) in said:
                continue
            if not re.search(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", j.prompt):
                said.add((u.path, j.group))
                log.warning("group %s: LoRA %s was trained with the trigger word %r, which its prompt %r lacks; "
                            "pass the --templates it was trained with, or put {trigger} in --prompt",
                            j.group, u.path, trigger, j.prompt[:80])


# ---------------------------------------------------------------- tree fingerprints


def tree_fingerprints(jobs: list[ImageJob], inputs: Inputs) -> dict[str, dict]:
    """{tree (`[fold_<k>/]w<weight>`): its fingerprint} for every tree the jobs write into."""
    by_tree: dict[str, list[ImageJob]] = {}
    for j in jobs:
        by_tree.setdefault(tree_of(j), []).append(j)
    templates = fingerprint.file_sha256(inputs.templates or DEFAULT_TEMPLATES)
    split = fingerprint.file_sha256(inputs.split) if inputs.split else None
    prompts_file = fingerprint.file_sha256(inputs.prompts_file) if inputs.prompts_file else None
    model = fingerprint.model_part(inputs.model)
    data: dict = {}  # fold -> content part of the images the plan read
    out = {}
    for tree, tjobs in sorted(by_tree.items()):
        fold, weight = tjobs[0].fold, tjobs[0].weight
        if fold not in data:
            data[fold] = fingerprint.files_part(sorted(inputs.train.get(fold, ())), root=inputs.data_root)
        uses = sorted({(u.name, u.path) for j in tjobs for u in j.loras})
        parts = dict(inputs.settings)
        parts.update(weight=weight, model=model, loras={n: fingerprint.file_sha256(p) for n, p in uses}, templates=templates,
                     split=split, prompts_file=prompts_file, data_images=data[fold], reading=fingerprint.reading_part(inputs.reading))
        tree_record = dict(fingerprint.make(**parts), fold=fold, weight=weight, model=str(inputs.model), reading=parts["reading"],
                  settings=json.loads(json.dumps(inputs.settings, default=str)))  # as it reads back: names values in messages
        records = [lora_record(p) for _, p in uses]
        if uses and all(records):
            tree_record["images"] = dict(sorted({k: v for r in records for k, v in r["images"].items()}.items()))
        out[tree] = tree_record
    return out


def is_ours(tree_record: dict | None) -> bool:
    """A fingerprint file this toolkit wrote (a mapping with `version` and `parts`)."""
    return isinstance(tree_record, dict) and "version" in tree_record and isinstance(tree_record.get("parts"), dict)


def stale_trees(out: Path, current: dict[str, dict], overwrite: bool) -> list[str]:
    """Trees whose recorded fingerprint differs from the current one.

    Without `overwrite` the first such tree is a one-line UserError saying what changed and what to
    do; a `fingerprint.json` that is not ours is never replaced. A tree with no
    record yet (new, or made before fingerprints) is not stale: its images are checked one by one.
    """
    stale = []
    for tree, tree_record in current.items():
        path = out / tree / FINGERPRINT_FILE
        if not path.exists():
            continue
        recorded = fingerprint.read(path)
        if not is_ours(recorded) or path.is_symlink():  # the user's file: never replaced (prompts.guard's rule)
            raise UserError(f"{path} exists and was not written by generate; it is left untouched (--overwrite replaces "
                            "only generate's own files): move it away or choose another --output")
        changed = fingerprint.diff(recorded, tree_record)
        if changed and not overwrite:
            raise UserError(
                f"{out / tree} was made from other inputs ({describe(changed, recorded, tree_record)} changed since); pass "
                "--overwrite to replace its images, or choose another --output"
            )
        if changed:
            stale.append(tree)
    return stale


def describe(changed: list[str], recorded: dict, current: dict) -> str:
    """The changed parts, settings with their values: 'steps 8 -> 9, templates'."""
    old, new = recorded.get("settings") or {}, current.get("settings") or {}
    return ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" if k in old and k in new else k for k in changed)


def write_fingerprints(out: Path, current: dict[str, dict]) -> None:
    """Write every tree's fingerprint (atomically), before its images; an equal record is left untouched."""
    for tree, tree_record in current.items():
        path = out / tree / FINGERPRINT_FILE
        if fingerprint.read(path) != tree_record:
            fingerprint.write(path, tree_record)
