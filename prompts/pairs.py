"""The one reader of image–mask pairs (segmentation data).

Layouts (detected per folder; a class folder may use either):
- `DATA/images/<name>.<ext>` + `DATA/masks/<name>.<ext>` (the mask may also be `<name>_mask` or
  `<name>_masks`, any image extension);
- Cellpose's `DATA/<name>.tif` + `DATA/<name>_masks.tif` (also `_cp_masks`, and .png/.tiff);
  Cellpose's side files `_flows`, `_outlines`, `_cp_outlines` are ignored;
- per class (or cell line): `DATA/<class>/images/` + `DATA/<class>/masks/`, or `DATA/<class>/` with
  Cellpose names. The class is the folder name (`Pair.label`).

Masks are instance label images: 0 background, 1..N one id per cell, in 8/16/32-bit integer PNG or
TIFF (float TIFFs whose values are whole numbers are accepted). Every bad pair is one line of the
`UserError` (a missing mask, a mask without an image, a shape mismatch, a mask that is not integer or
has several channels), so a user fixes them all in one go; nothing is written before that check.

`Pair.name` is the image's POSIX path relative to DATA: the stable id a split file lists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .images import is_image_file
from .layout import check_name
from .masks import lossy_problem, mask_problem, read_mask, read_mask_array
from .pair_layouts import PairLayout, check_mask_name, csv_pairs, ctc_pairs, ctc_sequences, mask_stem, suggest_rule

IMAGES_DIR = "images"
MASKS_DIR = "masks"
MASK_SUFFIXES = ("_masks", "_mask", "_cp_masks")  # image stem + one of these = its mask (Cellpose writes _masks / _cp_masks)
CELLPOSE_SIDE_FILES = ("_flows", "_outlines", "_cp_outlines")
_TIFF = (".tif", ".tiff")
_MASKISH = ("mask", "gt", "label", "seg", "annot", "truth")  # words in a folder name that say it holds masks
_MAX_SHOWN = 20  # error lines shown; the rest are counted


@dataclass(frozen=True)
class Pair:
    """One image with its instance mask. `name` is the image path relative to the data folder (POSIX)."""

    image: Path
    mask: Path
    name: str
    label: str | None = None
    group: str | None = None  # a CSV layout's group column (kept in one fold by `group_by: group`)
    mask_kind: str = "auto"  # data.masks: read the mask with load_mask(pair.mask, pair.mask_kind)


# --------------------------------------------------------------------------- masks

def load_mask(path: str | os.PathLike, kind: str = "auto") -> np.ndarray:
    """A mask file as int32 (H, W) instance labels: 0 background, 1..N cells (`prompts.masks.read_mask`).

    kind: 'auto' (a mask of one non-zero value is binary), 'instance' (ids as stored, not renumbered) or
    'binary' (connected components, touching cells split). Raises `UserError` naming the file.
    """
    return read_mask(path, kind).labels


def _mask_header(path: Path) -> tuple[tuple[int, ...], str | None]:
    """(shape, problem) of a mask, reading pixel data only when the dtype alone cannot tell (floats)."""
    if path.suffix.lower() in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        except Exception as err:  # tifffile raises many types for broken files
            return (), f"cannot decode mask: {err.__class__.__name__}: {err}; replace or remove it"
        if dtype.kind == "f" or len(shape) != 2:
            arr = read_mask_array(path)
            return arr.shape[:2], mask_problem(arr)
        if dtype.kind not in "iub":
            return shape, f"mask has dtype {dtype}, not integer; save instance labels 0..N as an 8/16-bit integer image"
        return shape, None
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        return (), f"cannot decode mask: {err.__class__.__name__}: {err}; replace or remove it"
    if mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return (h, w), None
    arr = read_mask_array(path)
    return arr.shape[:2], mask_problem(arr)


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header (PIL, else tifffile for TIFFs PIL cannot open)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        if path.suffix.lower() in _TIFF:
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    shape = tif.series[0].shape
                return tuple(shape[:2]) if len(shape) == 2 or shape[-1] in (1, 3, 4) else tuple(shape[-2:])
            except Exception:
                pass
        raise UserError(f"cannot decode image {path}: {err.__class__.__name__}: {err}; replace or remove it") from None


# --------------------------------------------------------------------------- finding pairs

def _is_side_file(stem: str) -> bool:
    return stem.endswith(CELLPOSE_SIDE_FILES)


def _mask_stem_of(stem: str) -> str | None:
    """The image stem a Cellpose mask stem belongs to (`a_masks` -> `a`), or None if `stem` names no mask."""
    for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _match(images: list[Path], masks_by_key: dict[str, list[Path]], rel, problems: list[str]) -> list[tuple[Path, Path]]:
    """Pair each image with the one mask filed under its stem; problems get one line per bad image."""
    matched = []
    for img in images:
        found = masks_by_key.get(img.stem, [])
        if not found:
            problems.append(f"{rel(img)}: no mask (looked for {img.stem}{{,{','.join(MASK_SUFFIXES)}}}.png/.tif); "
                            "add its mask or move the image out of the data folder")
        elif len(found) > 1:
            problems.append(f"{rel(img)}: several masks match ({', '.join(rel(m) for m in found)}); keep one")
        else:
            matched.append((img, found[0]))
    stems = {img.stem for img in images}
    for key, masks in sorted(masks_by_key.items()):
        if key not in stems:
            problems.extend(f"{rel(m)}: mask without an image (no image named {key.lstrip(chr(0))}.*); add the image or "
                            "remove the mask" for m in masks)
    dup = {}
    for img in images:
        dup.setdefault(img.stem, []).append(img)
    for stem, same in dup.items():
        if len(same) > 1:
            problems.append(f"{', '.join(rel(p) for p in same)}: several images share the name {stem}; rename one")
    return [(i, m) for i, m in matched if len(dup[i.stem]) == 1]


def _pairs_split_folders(folder: Path, rel, problems: list[str], layout: PairLayout) -> list[tuple[Path, Path]]:
    """FOLDER/<images>/ + FOLDER/<masks>/: a mask is `<stem>`, `<stem>_mask(s)`, `<stem>_cp_masks`, or what data.mask_name makes."""
    images_dir, masks_dir = folder / layout.images, folder / layout.masks
    if not masks_dir.is_dir():
        problems.append(f"{rel(images_dir)}: no {layout.masks}/ folder beside it; put the masks in {rel(masks_dir)}/ "
                        "or name their folder with data.masks_dir")
        return []
    images = _images_in(images_dir)
    stems = {p.stem for p in images}
    masks: dict[str, list[Path]] = {}
    mask_files = _images_in(masks_dir)
    if layout.mask_name:
        by_stem: dict[str, list[Path]] = {}
        for m in mask_files:
            by_stem.setdefault(m.stem, []).append(m)
        claimed = set()
        for img in images:
            key = mask_stem(layout.mask_name, img.stem)
            if key is not None and key in by_stem:
                masks[img.stem] = by_stem[key]
                claimed.add(key)
        for stem, ms in by_stem.items():
            if stem not in claimed:
                masks.setdefault(f"\0{stem}", []).extend(ms)  # no image makes this name: reported as a mask without an image
    else:
        for m in mask_files:
            # filed under its own stem when an image has that stem, else under the stem less `_mask(s)`
            key = _mask_stem_of(m.stem)
            owner = m.stem if m.stem in stems or key is None or key not in stems else key
            masks.setdefault(owner, []).append(m)
    before = len(problems)
    matched = _match(images, masks, rel, problems)
    if not matched and images and mask_files and len(problems) > before:
        # nothing pairs: one line with the rule that would pair them, not a line per file (cut after a few)
        del problems[before:]
        hint = suggest_rule(images[0].stem, mask_files[0].stem)
        problems.append(f"{rel(images_dir)}: no image has a mask of its name (first image {images[0].name}, first mask "
                        f"{mask_files[0].name}); set data.mask_name to the rule that makes a mask's name from its image's"
                        + (f", e.g. {hint!r}" if hint else ", e.g. 'man_seg{stem[1:]}' or 're:PATTERN=>REPLACEMENT'"))
    return matched


def _pairs_cellpose(folder: Path, rel, problems: list[str]) -> list[tuple[Path, Path]]:
    """FOLDER/<name>.<ext> + FOLDER/<name>_masks.<ext> (Cellpose)."""
    images, masks = [], {}
    for p in _images_in(folder):
        if _is_side_file(p.stem):
            continue
        key = _mask_stem_of(p.stem)
        if key is None:
            images.append(p)
        else:
            masks.setdefault(key, []).append(p)
    return _match(images, masks, rel, problems)


def _has_cellpose_masks(folder: Path) -> bool:
    return any(_mask_stem_of(p.stem) is not None for p in _images_in(folder))


def _layout_pairs(folder: Path, rel, problems: list[str], layout: PairLayout) -> list[tuple[Path, Path]] | None:
    """The pairs of one folder in either layout, or None when it holds neither."""
    if (folder / layout.images).is_dir():
        return _pairs_split_folders(folder, rel, problems, layout)
    if _has_cellpose_masks(folder):
        return _pairs_cellpose(folder, rel, problems)
    return None


def _check_pair(image: Path, mask: Path, rel) -> str | None:
    """One line when the mask is not a label image or its shape differs from the image's, else None."""
    problem = lossy_problem(mask)
    if problem:
        return f"{rel(mask)}: {problem}"
    shape, problem = _mask_header(mask)
    if problem:
        return f"{rel(mask)}: {problem}"
    try:
        ih, iw = image_shape(image)
    except UserError as err:
        return str(err)
    if tuple(shape[:2]) != (ih, iw):
        return (f"{rel(image)}: image is {iw}x{ih} px but its mask {rel(mask)} is {shape[1]}x{shape[0]} px; "
                "masks must have the image's size")
    return None


def _nested_pairs(folder: Path, layout: PairLayout) -> Path | None:
    """A folder below `folder` (two or more levels down) that holds a pair layout, or None."""
    for d in sorted(folder.rglob(layout.images)):
        if d.is_dir() and d.parent != folder:
            return d
    return None


def _first_names(root: Path, n: int = 3) -> str:
    """The first folders and files directly in root, for an error that says what it found."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:n * 2]) + (" ..." if len(names) > n * 2 else "") if names else "nothing"


def _nothing_pairs(root: Path, layout: PairLayout) -> UserError:
    """The error when nothing pairs: what was found, and the key that would pair it."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    hint = ("set data.images_dir and data.masks_dir to the folders that hold them (e.g. images_dir: img, masks_dir: gt), "
            "data.mask_name when names differ, or list the pairs in a CSV (data.pairs: pairs.csv with image,mask columns)")
    if len(dirs) >= 2:
        # the masks' folder is the one whose name says so (gt, masks, labels, seg, annotations), else the second
        maskish = [d for d in dirs if any(w in d.name.lower() for w in _MASKISH)]
        b = maskish[0] if maskish else dirs[1]
        a = next(d for d in dirs if d != b)
        first = [next((p.name for p in sorted(d.iterdir()) if p.is_file()), "-") for d in (a, b)]
        hint = (f"if {a.name}/ holds the images and {b.name}/ the masks, set data.images_dir: {a.name} and data.masks_dir: "
                f"{b.name} (first names: {a.name}/{first[0]}, {b.name}/{first[1]}); data.mask_name pairs different names; "
                "or list the pairs in a CSV (data.pairs: pairs.csv)")
    return UserError(f"no image–mask pairs in {root} (found {_first_names(root)}): expected {layout.images}/ + {layout.masks}/ "
                     "with matching names, Cellpose's name.tif + name_masks.tif, the Cell Tracking Challenge's 01/ + "
                     f"01_GT/SEG/, or one such folder per class; {hint}")


def _class_folders(root: Path, rel, problems: list[str], layout: PairLayout) -> list[tuple[Path, Path, str | None]]:
    """Pairs of the class folders DATA/<class>/; nested layouts and symlinked duplicates are refused, never dropped."""
    found = []
    seen: dict[Path, str] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        real = sub.resolve()
        if real in seen:
            problems.append(f"{rel(sub)}: is the same folder as {seen[real]} (a symlink): its pairs would be read twice and "
                            "land in a fold's training and test set; remove the link")
            continue
        seen[real] = rel(sub)
        if sub.is_symlink() and real.parent == root.resolve():
            problems.append(f"{rel(sub)}: is a symlink to the class folder {real.name}; remove the link")
            continue
        pairs = _layout_pairs(sub, rel, problems, layout)
        if pairs is None:
            nested = _nested_pairs(sub, layout)
            if nested is not None:
                problems.append(f"{rel(nested)}: pairs nested below the class folder {rel(sub)}/ are not read; move "
                                f"{rel(nested.parent)}/{layout.images} and {layout.masks} up to {rel(sub)}/ (one folder per class)")
            continue
        label = check_name(sub.name, "class")
        found += [(i, m, label) for i, m in pairs]
    return found


def read_pairs(data_dir: str | os.PathLike, layout: PairLayout | None = None) -> list[Pair]:
    """Every image–mask pair under `data_dir`, sorted by name; a UserError lists every bad pair, one per line.

    layout: folder names, the mask name rule or a CSV (`prompts.pair_layouts.PairLayout`; default: images/ + masks/).
    """
    layout = layout or PairLayout()
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; give a folder of image–mask pairs "
                        f"({IMAGES_DIR}/ + {MASKS_DIR}/, or Cellpose's name.tif + name_masks.tif)")
    if layout.mask_name:
        check_mask_name(layout.mask_name)

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    problems: list[str] = []
    found: list[tuple[Path, Path, str | None, str | None]] = []
    if layout.csv:
        found = [(i, m, check_name(c, "class") if c else None, g) for i, m, c, g in csv_pairs(root, layout.csv, rel, problems)]
    elif ctc_sequences(root):
        found = [(i, m, seq, None) for i, m, seq in ctc_pairs(root, rel, problems)]
    else:
        top = _layout_pairs(root, rel, problems, layout)
        if top is not None:
            found = [(i, m, None, None) for i, m in top]
        else:
            found = [(i, m, label, None) for i, m, label in _class_folders(root, rel, problems, layout)]
    for image, mask, _, _ in found:
        line = _check_pair(image, mask, rel)
        if line:
            problems.append(line)
    if len(problems) == 1 and not found:  # one reason nothing pairs (e.g. the names follow another rule): one line
        raise UserError(f"{root}: {problems[0]}")
    if problems:
        shown = problems[:_MAX_SHOWN]
        more = f"\n... and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        raise UserError(f"{len(problems)} bad image–mask pair(s) in {root}:\n" + "\n".join(shown) + more)
    if not found:
        raise _nothing_pairs(root, layout)
    pairs = [Pair(image=i, mask=m, name=rel(i), label=label, group=group, mask_kind=layout.mask_kind)
             for i, m, label, group in found]
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{root}: image {dup} is listed twice; list each image once")
    return sorted(pairs, key=lambda p: p.name)


def pairs_by_name(pairs: list[Pair]) -> dict[str, Pair]:
    return {p.name: p for p in pairs}
