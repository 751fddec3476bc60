"""Which images to make: group, fold, LoRA weight, index, seed, prompt, file name.

Planning reads the data folder, the split file and the names of LoRA files, never
a model, so the plan is deterministic (given the run seed) and testable on its own.
The sampler (`generate.sample`) only executes it.

Counting (per fold when a split is given, from that fold's *training* images):
- `count`: N images per group;
- `fractions`: `prompts.layout.count_of_fraction` (round half up, the rule `classify`
  uses for real+P) of the group's real images, for the largest f (smaller mixes take
  subsets: file indices 0..n-1 of the largest);
- `balance`: each class is topped up to the largest class's real count; a class's
  deficit is shared by its cell-line groups in proportion to their real counts.
When several are given, a group gets the largest of the counts.

Every path comes from `prompts.layout` (fold, weight and class folders); labels and
cell lines are checked there (`check_name`) before they become path parts, so no
image can land outside the output folder.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from prompts import layout
from prompts.dataset import Dataset, Record
from prompts.errors import UserError
from prompts.layout import LORA_DIFFUSERS_FILE, check_name, count_of_fraction, fold_name, group_name
from prompts.templates import Templates, fill_fields

_TAG = re.compile(r"<(lora|lyco|hypernet):([^>]*)>", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class LoraUse:
    """One LoRA applied to an image: its name, file, and multiplier (the tag weight; 1.0 by default)."""

    name: str
    path: str
    multiplier: float = 1.0


@dataclass(frozen=True)
class ImageJob:
    """One image to make. `file` is relative to the output folder (POSIX)."""

    file: str
    label: str
    cell_line: str | None
    group: str
    fold: int | None
    weight: float  # the output tree's LoRA weight; each LoRA acts at multiplier x weight
    index: int  # 0-based within (fold, group, weight); the same index shares its seed across weights
    seed: int  # 0 .. 2**32-1, the image's own seed
    prompt: str  # without <lora:...> tags
    negative_prompt: str
    loras: tuple[LoraUse, ...]
    gray: bool  # the source group is grayscale: save mode L
    init_image: str | None = None  # img2img: path relative to the data folder (a training image)
    strength: float | None = None

    @property
    def batch_key(self) -> tuple:
        """Images with the same key can share one pipeline call (same LoRAs, weight, strength)."""
        return (self.fold if self.fold is not None else -1, self.loras, self.weight, self.strength or 0.0)


@dataclass
class GroupInfo:
    """A LoRA group of the data: its real (training) images for one fold."""

    label: str
    cell_line: str | None
    records: list[Record] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The group's folder name: the class, or `<cell_line>__<class>`."""
        return group_name(self.label, self.cell_line)


# ---------------------------------------------------------------- numbers


def parse_weight(text, where: str) -> float:
    """The weight of a `<lora:NAME:WEIGHT>` tag; a one-line UserError when it is not a finite number.
    (`--lora-weights` is checked by the schema.)"""
    try:
        w = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {text!r} is not a number; give a weight such as 0.8") from None
    if not math.isfinite(w):
        raise UserError(f"{where}: {text!r} is not a finite number; give a weight such as 0.8")
    return w


def largest_remainder(total: int, shares: dict[str, int]) -> dict[str, int]:
    """Split `total` over keys in proportion to `shares` (integers summing to `total`; ties by key)."""
    weight = sum(shares.values())
    if weight == 0 or total == 0:
        return {k: 0 for k in shares}
    exact = {k: Fraction(total * v, weight) for k, v in shares.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(shares, key=lambda k: (-(exact[k] - out[k]), k))[:rest]:
        out[k] += 1
    return out


def group_counts(groups: list[GroupInfo], count: int | None, fractions: list[float], balance: bool) -> dict[str, int]:
    """Images to make per group name (see the module docstring)."""
    if count is None and not fractions and not balance:
        raise UserError("say how many images to make: --count N, --fraction F [F ...] or --balance")
    wanted = {g.name: 0 for g in groups}
    for g in groups:
        if count is not None:
            wanted[g.name] = max(wanted[g.name], count)
        if fractions:
            wanted[g.name] = max(wanted[g.name], max(count_of_fraction(len(g.records), f) for f in fractions))
    if balance:
        per_class: dict[str, int] = {}
        for g in groups:
            per_class[g.label] = per_class.get(g.label, 0) + len(g.records)
        top = max(per_class.values())
        for label, n in per_class.items():
            members = {g.name: len(g.records) for g in groups if g.label == label}
            for name, extra in largest_remainder(top - n, members).items():
                wanted[name] = max(wanted[name], extra)
    return wanted


def derive_seed(run_seed: int, *parts) -> int:
    """A 32-bit seed (0 .. 2**32-1) from the run seed and a path of names (stable across Python versions)."""
    text = "/".join(str(p) for p in (run_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


# ---------------------------------------------------------------- prompts


def parse_lora_tags(prompt: str, where: str = "prompt") -> tuple[str, list[tuple[str, float]]]:
    """AUTOMATIC1111's `<lora:NAME:WEIGHT>` tags: the prompt without them, and [(NAME, WEIGHT)].

    WEIGHT is optional (1.0). The tags are removed from the text, as A1111 does;
    `<lyco:..>` and `<hypernet:..>` are refused.
    """
    tags = []
    for m in _TAG.finditer(prompt):
        kind, body = m.group(1).lower(), m.group(2)
        if kind != "lora":
            raise UserError(f"{where}: <{kind}:...> is not supported; use <lora:NAME:WEIGHT>")
        parts = body.split(":")
        name = parts[0].strip()
        if not name or len(parts) > 2:
            raise UserError(f"{where}: tag <{kind}:{body}> must read <lora:NAME> or <lora:NAME:WEIGHT>")
        weight = parse_weight(parts[1].strip(), f"{where}: tag <lora:{body}>") if len(parts) == 2 else 1.0
        tags.append((name, weight))
    text = _TAG.sub("", prompt)
    text = " ".join(text.split())
    text = re.sub(r"\s*,(\s*,)*", ",", text).replace(",", ", ").replace(",  ", ", ")
    text = " ".join(text.split()).strip(" ,")
    return text, tags


def read_prompts_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist; give a text file with one prompt per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UserError(f"prompts file {path} holds no prompt (one per line; # starts a comment)")
    return lines


# ---------------------------------------------------------------- LoRA files


def lora_base(lora: str | None, fold: int | None) -> Path:
    """The folder (or single file) holding the LoRAs for fold index `fold` (or the whole data when None)."""
    if not lora:
        raise UserError("no LoRA given: pass --lora DIR (written by `python -m lora train`) or a LoRA .safetensors file")
    root = Path(lora)
    if not root.exists():
        raise UserError(f"LoRA folder {root} does not exist; pass --lora with the output folder of `python -m lora train`")
    if root.is_file():
        if root.suffix.lower() != ".safetensors":
            raise UserError(f"LoRA file {root} is not a .safetensors file; convert it (pickle files are refused)")
        return root
    has_folds = any(p.is_dir() and layout.parse_fold_name(p.name) is not None for p in root.iterdir())
    if fold is None:
        if has_folds and not _lora_in(root):
            raise UserError(
                f"{root} holds per-fold LoRAs (fold_<k>/); pass --split FILE --fold K|all so that fold k uses its own LoRAs"
            )
        return root
    if layout.fold_root(root, fold).is_dir():
        return layout.fold_root(root, fold)
    if has_folds:
        raise UserError(f"{root} has no {fold_name(fold)}/: train that fold with `python -m lora train --split FILE --fold all`")
    raise UserError(
        f"{root} holds LoRAs trained on all images, not per fold: with --split they would leak test images into "
        f"{fold_name(fold)}'s training set; train per fold with `python -m lora train --split FILE --fold all`"
    )


def _lora_in(folder: Path, stem: str | None = None) -> Path | None:
    """The LoRA file of a folder: the diffusers file, else <stem>.safetensors, else the only .safetensors."""
    if (folder / LORA_DIFFUSERS_FILE).is_file():
        return folder / LORA_DIFFUSERS_FILE
    if stem and (folder / layout.lora_kohya_file(stem)).is_file():
        return folder / layout.lora_kohya_file(stem)
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if len(files) == 1 else None


def find_lora(base: Path, name: str) -> Path:
    """The file of LoRA `name` (a group or a tag name) under `base`; a UserError naming what was looked for."""
    if base.is_file():
        return base
    if layout.lora_dir(base, None, name).is_dir():
        found = _lora_in(layout.lora_dir(base, None, name), name)
        if found:
            return found
    if (base / layout.lora_kohya_file(name)).is_file():
        return base / layout.lora_kohya_file(name)
    if Path(name).suffix == ".safetensors" and Path(name).is_file():
        return Path(name)
    if (base / "all").is_dir() and _lora_in(base / "all", "all"):
        return _lora_in(base / "all", "all")  # one LoRA for every group (lora train --per all)
    if _lora_in(base) and not any(p.is_dir() for p in base.iterdir()):
        return _lora_in(base)  # a folder holding just one LoRA
    raise UserError(
        f"no LoRA for '{name}' in {base}: expected {layout.lora_dir(base, None, name) / LORA_DIFFUSERS_FILE} "
        f"(or {layout.lora_dir(base, None, name) / layout.lora_kohya_file(name)}); "
        "train it with `python -m lora train`, or leave it out with --classes / --cell-lines"
    )


def detect_per(base: Path, dataset: Dataset) -> str:
    """'cell_line_class' when the LoRA folder has <cell_line>__<class>/ folders (or one `all` LoRA) for data
    with cell lines, else 'class': generation prompts then match the captions the LoRAs were trained on."""
    if base.is_file() or not dataset.cell_lines:
        return "class"
    if (base / "all").is_dir():  # lora train --per all captions each image with its cell line
        return "cell_line_class"
    names = {group_name(r.label, r.cell_line) for r in dataset.records}
    return "cell_line_class" if any((base / n).is_dir() for n in names) else "class"


# ---------------------------------------------------------------- the plan


@dataclass
class PlanRequest:
    """What the user asked for; built by the CLI from the config and flags."""

    lora: str | None
    weights: list[float]
    count: int | None = None
    fractions: list[float] = field(default_factory=list)
    balance: bool = False
    per: str = "auto"  # auto, class, cell_line_class
    classes: list[str] = field(default_factory=list)
    cell_lines: list[str] = field(default_factory=list)
    prompt: str | None = None
    prompts: list[str] = field(default_factory=list)  # from --prompts-file
    negative_prompt: str | None = None
    init_images: str = "none"
    strengths: list[float] = field(default_factory=lambda: [0.5])
    run_seed: int = 0


def make_groups(dataset: Dataset, per: str, train: set[str] | None) -> list[GroupInfo]:
    """Groups of the data with their real images (only `train` paths when given), sorted by name."""
    groups: dict[str, GroupInfo] = {}
    for r in dataset.records:
        cell_line = r.cell_line if per == "cell_line_class" else None
        g = groups.setdefault(group_name(r.label, cell_line), GroupInfo(r.label, cell_line))
        if train is None or r.path in train:
            g.records.append(r)
    return [groups[k] for k in sorted(groups)]


def plan_fold(
    req: PlanRequest,
    dataset: Dataset,
    templates: Templates,
    fold_index: int | None,
    train: set[str] | None,
    is_gray,
) -> list[ImageJob]:
    """Every image of one fold (or of the whole data when fold_index is None), in a fixed order.

    is_gray(records) -> bool decides whether a group's source images are grayscale
    (it is given only the group's training images).
    """
    fname = fold_name(fold_index) if fold_index is not None else None  # also a part of every seed
    base = lora_base(req.lora, fold_index)
    per = detect_per(base, dataset) if req.per == "auto" else req.per
    if per == "cell_line_class" and not dataset.cell_lines:
        raise UserError(f"per cell line asked for, but {dataset.root} has no cell lines (DATA/<cell_line>/<class>/ or a cell_line column)")
    groups = make_groups(dataset, per, train)
    wanted = group_counts(groups, req.count, req.fractions, req.balance)  # balance looks at every class
    for names, have, flag in ((req.classes, dataset.classes, "--classes"), (req.cell_lines, dataset.cell_lines, "--cell-lines")):
        unknown = sorted(set(names) - set(have))
        if unknown:
            raise UserError(f"{flag} {unknown[0]}: not in {dataset.root} (there: {', '.join(have) or 'none'})")
    if req.classes:
        groups = [g for g in groups if g.label in req.classes]
    if req.cell_lines:
        groups = [g for g in groups if g.cell_line in req.cell_lines or g.cell_line is None]
    if req.init_images == "real":
        empty = [g.name for g in groups if wanted[g.name] and not g.records]
        if empty:
            raise UserError(f"img2img: group {empty[0]} has no training images in {fname or 'the data'} to start from")
    jobs = []
    for g in groups:
        n = wanted[g.name]
        if n == 0:
            continue
        check_name(g.label, "class")  # the reader checks too; a path part is checked where it is made
        if g.cell_line is not None:
            check_name(g.cell_line, "cell line")
        gp = templates.for_group(g.label, g.cell_line)
        fields = templates.fields(g.label, g.cell_line)  # {class} etc. mean here what they mean in templates
        gray = bool(g.records) and is_gray(g.records)
        parsed: dict[str, tuple] = {}  # prompt text -> (text without tags, LoRAs)
        init_order = sorted(r.path for r in g.records)
        random.Random(derive_seed(req.run_seed, fname, g.name, "init")).shuffle(init_order)
        for index in range(n):
            if req.prompts:
                text = req.prompts[index % len(req.prompts)]
            else:
                text = req.prompt if req.prompt is not None else gp.prompt
            if text not in parsed:
                prompt, tags = parse_lora_tags(fill_fields(text, fields), f"prompt {text!r}")
                loras = tuple(LoraUse(name, str(find_lora(base, name)), w) for name, w in tags) or (
                    LoraUse(g.name, str(find_lora(base, g.name)), 1.0),
                )
                parsed[text] = prompt, loras
            prompt, loras = parsed[text]
            negative = fill_fields(req.negative_prompt, fields) if req.negative_prompt is not None else gp.negative_prompt
            seed = derive_seed(req.run_seed, fname, g.name, index)
            init, strength = None, None
            if req.init_images == "real":
                init = init_order[index % len(init_order)]
                strength = random.Random(seed).choice(req.strengths)
            for w in req.weights:
                folder = layout.synthetic_class_dir(Path(), fold_index, w, g.label, g.cell_line)
                file = (folder / image_name(g.name, index)).as_posix()
                jobs.append(ImageJob(file, g.label, g.cell_line, g.name, fold_index, float(w), index, seed, prompt,
                                negative, loras, gray, init, strength))
    return jobs


def image_name(group: str, index: int) -> str:
    """The file name of image `index` (0-based) of a group: `<group>_<index, 5 digits>.png`."""
    return f"{group}_{index:05d}.png"


def tree_dir(fold: int | None, weight: float) -> str:
    """A synthetic tree, `[fold_<k>/]w<weight>` (POSIX, relative to OUT): one per fold and LoRA weight."""
    return (layout.fold_root(Path(), fold) / layout.weight_dir_name(weight)).as_posix()


def tree_of(job: ImageJob) -> str:
    """The synthetic tree that holds a job's image."""
    return tree_dir(job.fold, job.weight)


def batches(jobs: list[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Consecutive jobs with the same batch key, cut into batches of at most `batch_size`."""
    jobs = sorted(jobs, key=lambda j: (j.batch_key, j.group, j.index))
    out: list[list[ImageJob]] = []
    for job in jobs:
        if out and len(out[-1]) < batch_size and out[-1][0].batch_key == job.batch_key:
            out[-1].append(job)
        else:
            out.append([job])
    return out


def share(items: list, rank: int, world: int) -> list:
    """This process's contiguous share of `items` (every item in exactly one process)."""
    n = len(items)
    return items[rank * n // world:(rank + 1) * n // world]
