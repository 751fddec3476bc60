"""The pair layouts labs have, read without renaming a file (used by `prompts.pairs.read_pairs`).

- a name rule (`data.mask_name`): the mask's file stem made from the image's stem, either a
  template (`{stem}`, `{stem[A:B]}` a slice of it: `man_seg{stem[1:]}` pairs `t01.tif` with
  `man_seg01.tif`, `{stem[4:]}` pairs `dna-3.png` with `3.png`) or a regex pair
  `re:PATTERN=>REPLACEMENT` (`re:dna-(\\d+)=>\\1`, Python `re` syntax, the pattern matching the
  whole stem);
- the Cell Tracking Challenge layout, found by its names: `DATA/01/tNNN.tif` with
  `DATA/01_GT/SEG/man_segNNN.tif` (only annotated frames are pairs; the set is `01`);
- a CSV file (`data.pairs: FILE.csv`) with a header `image,mask[,class][,group]`, paths relative
  to the data folder.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CTC_GT = "_GT"  # 01 -> 01_GT/SEG
CTC_MASK = re.compile(r"^man_seg(\d+)$")
_SLICE = re.compile(r"\{stem(?:\[(-?\d*):(-?\d*)\])?\}")
REGEX_PREFIX = "re:"


@dataclass(frozen=True)
class PairLayout:
    """How the pairs of a data folder are filed: folder names, the mask name rule, or a CSV listing them."""

    images: str = "images"
    masks: str = "masks"
    mask_name: str | None = None
    csv: str | None = None
    mask_kind: str = "auto"  # data.masks: how the masks found are read (prompts.masks), stamped on each Pair

    @property
    def default(self) -> bool:
        return (self.images, self.masks, self.mask_name, self.csv, self.mask_kind) == ("images", "masks", None, None, "auto")


def layout_of(data_section) -> PairLayout:
    """The PairLayout of a `data` section (its images_dir, masks_dir, mask_name and pairs keys)."""
    pairs = getattr(data_section, "pairs", None)
    return PairLayout(getattr(data_section, "images_dir", "images") or "images", getattr(data_section, "masks_dir", "masks") or "masks",
                      getattr(data_section, "mask_name", None), pairs if pairs not in (None, "", "auto") else None,
                      getattr(data_section, "masks", "auto") or "auto")


def check_mask_name(rule: str) -> None:
    """A UserError naming data.mask_name when the rule cannot be applied."""
    if rule.startswith(REGEX_PREFIX):
        pattern, sep, _ = rule[len(REGEX_PREFIX):].partition("=>")
        if not sep:
            raise UserError(f"data.mask_name {rule!r}: a regex rule is re:PATTERN=>REPLACEMENT, e.g. 're:dna-(\\d+)=>\\1'")
        try:
            re.compile(pattern)
        except re.error as err:
            raise UserError(f"data.mask_name {rule!r}: bad regex ({err})") from None
    elif not _SLICE.search(rule):
        raise UserError(f"data.mask_name {rule!r}: name the image's stem as {{stem}} or a slice {{stem[1:]}}, "
                        "e.g. 'man_seg{stem[1:]}', or give re:PATTERN=>REPLACEMENT")


def mask_stem(rule: str, stem: str) -> str | None:
    """The mask stem the rule makes from an image stem (None when a regex rule does not match it)."""
    if rule.startswith(REGEX_PREFIX):
        pattern, _, repl = rule[len(REGEX_PREFIX):].partition("=>")
        m = re.fullmatch(pattern, stem)
        return m.expand(repl) if m else None

    def piece(m: re.Match) -> str:
        if m.group(1) is None and m.group(2) is None:
            return stem
        a = int(m.group(1)) if m.group(1) else None
        b = int(m.group(2)) if m.group(2) else None
        return stem[a:b]

    return _SLICE.sub(piece, rule)


def suggest_rule(image_stem: str, mask_stem_: str) -> str | None:
    """A `data.mask_name` template that turns `image_stem` into `mask_stem_` (sharing their longest common end), or None."""
    n = 0
    while n < min(len(image_stem), len(mask_stem_)) and image_stem[-1 - n] == mask_stem_[-1 - n]:
        n += 1
    if n == 0:
        return None
    cut = len(image_stem) - n
    return mask_stem_[: len(mask_stem_) - n] + ("{stem}" if cut == 0 else f"{{stem[{cut}:]}}")


# --------------------------------------------------------------------------- Cell Tracking Challenge


def ctc_sequences(root: Path) -> list[Path]:
    """Sequence folders `NN` of root that have a `NN_GT/SEG` folder beside them (the CTC layout)."""
    return sorted(d for d in root.iterdir() if d.is_dir() and (root / f"{d.name}{CTC_GT}" / "SEG").is_dir())


def ctc_pairs(root: Path, rel, problems: list[str]) -> list[tuple[Path, Path, str]]:
    """(image, mask, sequence) of every annotated frame: `NN_GT/SEG/man_segT.tif` with `NN/tT.tif`."""
    out = []
    for seq in ctc_sequences(root):
        for mask in sorted((root / f"{seq.name}{CTC_GT}" / "SEG").glob("man_seg*.tif*")):
            m = CTC_MASK.match(mask.stem)
            if not m:
                problems.append(f"{rel(mask)}: not a Cell Tracking Challenge 2D mask name (man_segT.tif); 3D slices "
                                "(man_seg_T_Z.tif) are not read")
                continue
            image = next((p for p in (seq / f"t{m.group(1)}{mask.suffix}", seq / f"t{m.group(1)}.tif") if p.is_file()), None)
            if image is None:
                problems.append(f"{rel(mask)}: no frame {seq.name}/t{m.group(1)}.tif for this mask")
                continue
            out.append((image, mask, seq.name))
    return out


# --------------------------------------------------------------------------- CSV


def csv_pairs(root: Path, csv_path: str, rel, problems: list[str]) -> list[tuple[Path, Path, str | None, str | None]]:
    """(image, mask, class or None, group or None) of every row of a CSV `image,mask[,class][,group]`."""
    path = Path(csv_path)
    if not path.is_absolute() and not path.is_file():
        path = root / csv_path
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"data.pairs {csv_path}: cannot read it ({err.__class__.__name__}); give a CSV with a header "
                        "image,mask[,class][,group]") from None
    if not rows or not {"image", "mask"} <= set(header):
        raise UserError(f"data.pairs {csv_path}: needs a header image,mask[,class][,group] and one row per pair")
    top = root.resolve()
    out = []
    for n, row in enumerate(rows, start=2):
        files = []
        for key in ("image", "mask"):
            value = (row.get(key) or "").strip()
            p = (root / value).resolve() if value else None
            if p is None or not p.is_relative_to(top):
                problems.append(f"{path.name} line {n}: {key} {value!r} is not a path inside {root}")
            elif not p.is_file():
                problems.append(f"{path.name} line {n}: {key} {value} does not exist")
            else:
                files.append(root / value)
        if len(files) == 2:
            out.append((files[0], files[1], (row.get("class") or "").strip() or None, (row.get("group") or "").strip() or None))
    return out
