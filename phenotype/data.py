"""The phenotyping data folder: monocultures, co-cultures, and the truth about each co-culture cell's type.

Layout (the one contract every reader and writer of this room uses; docs/tutorials/phenotyping.md):

    DATA/mono/<type>/            every cell in these images has type <type> (the well says so)
        images/ + masks/         instance masks beside the images (`prompts.pairs` layouts), or
        <name>.tif + <name>_masks.tif   (Cellpose), or
        <name>.png ...           images alone: cells come from the classical floor (Otsu + watershed)
    DATA/co/                     co-culture images with instance masks: images/ + masks/, Cellpose names,
                                 or one such folder per group (plate, well, date): co/<group>/images/ + masks/
        cell_types.csv           image,label,type[,group]: the type of each cell (label = its id in the mask), or
        type_maps/<stem>.png     a second label image whose value is the type index, with
        types.txt                one type name per line (line 1 = value 1), as CoNSeP / HoVer-Net store it, or
        points.csv               image,x,y,type[,group]: one point per cell, for counting alone (the images may
                                 then come without masks: cells are found by the classical floor)

`image` in a CSV is the image's path relative to `co/` (`images/a.png`), its file name, or its stem, when
that is unique. The group key is the CSV's `group` column or the sub-folder; when present, folds keep a
group together. Every bad input is one line of one `UserError` (unknown image, label not in its mask,
a path escaping the data folder, a type map of the wrong size, ...), so a user fixes them all at once.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from prompts.errors import UserError
from prompts.images import is_image_file
from prompts.layout import check_name
from prompts.pairs import load_mask, read_pairs

MONO_DIR = "mono"
CO_DIR = "co"
CELL_TYPES_CSV = "cell_types.csv"
POINTS_CSV = "points.csv"
TYPE_MAPS_DIR = "type_maps"
TYPES_TXT = "types.txt"
CELLS, POINTS = "cells", "points"  # what the co-culture truth is: a type per cell, or points for counting
_MAX_SHOWN = 20


@dataclass(frozen=True)
class Point:
    """One annotated cell centre (pixels, x to the right, y down) and its type."""

    x: float
    y: float
    type: str


@dataclass
class SourceImage:
    """One image of the study.

    name: POSIX path relative to DATA (the stable id folds and reports use); mask: instance mask or None
    (cells from the classical floor); mono_type: the type of every cell of a monoculture image;
    cell_types: co-culture truth per mask label; points: co-culture truth for counting alone.
    """

    name: str
    image: Path
    mask: Path | None = None
    group: str | None = None
    mono_type: str | None = None
    cell_types: dict[int, str] | None = None
    points: list[Point] | None = None

    @property
    def is_mono(self) -> bool:
        return self.mono_type is not None


@dataclass
class PhenotypeData:
    """Everything read from DATA: types (sorted), monoculture and co-culture images, what the truth is."""

    root: Path
    types: list[str]
    mono: list[SourceImage]
    co: list[SourceImage]
    truth: str = CELLS
    notes: list[str] = field(default_factory=list)

    @property
    def has_groups(self) -> bool:
        return any(im.group is not None for im in self.co)


class _Problems(list):
    """Lines of one UserError; `fail` raises it when there is any."""

    def fail(self, root: Path) -> None:
        if self:
            shown = self[:_MAX_SHOWN]
            more = f"\n... and {len(self) - _MAX_SHOWN} more" if len(self) > _MAX_SHOWN else ""
            raise UserError(f"{len(self)} problem(s) in the phenotyping data {root}:\n" + "\n".join(shown) + more)


# --------------------------------------------------------------------------- monocultures


def _plain_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _has_pairs(folder: Path) -> bool:
    from prompts.pairs import _has_cellpose_masks

    return (folder / "images").is_dir() or _has_cellpose_masks(folder)


def _folder_images(folder: Path, prefix: str) -> list[tuple[str, Path, Path | None, str | None]]:
    """(name, image, mask or None, sub-folder) of one folder in any layout; names are `prefix/<relative path>`."""
    if _has_pairs(folder):
        return [(f"{prefix}/{p.name}", p.image, p.mask, p.label) for p in read_pairs(folder)]
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != TYPE_MAPS_DIR)
    if subs and any(_has_pairs(d) for d in subs):
        return [(f"{prefix}/{p.name}", p.image, p.mask, p.label) for p in read_pairs(folder)]
    return [(f"{prefix}/{p.name}", p, None, None) for p in _plain_images(folder)]


def read_mono(root: Path, problems: _Problems) -> list[SourceImage]:
    """Every monoculture image under DATA/mono/<type>/, typed by its folder."""
    mono = root / MONO_DIR
    if not mono.is_dir():
        return []
    out = []
    for d in sorted(p for p in mono.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cell_type = check_name(d.name, "cell type")
            found = _folder_images(d, f"{MONO_DIR}/{d.name}")
        except UserError as err:
            problems.append(str(err))
            continue
        if not found:
            problems.append(f"{MONO_DIR}/{d.name}: no images; add the monoculture's images or remove the folder")
        out += [SourceImage(name, image, mask, mono_type=cell_type) for name, image, mask, _ in found]
    return out


# --------------------------------------------------------------------------- co-cultures: images


def read_co_images(root: Path) -> list[SourceImage]:
    """Every co-culture image under DATA/co/ (with its mask when there is one; group: its sub-folder)."""
    co = root / CO_DIR
    if not co.is_dir():
        raise UserError(f"{root}: no {CO_DIR}/ folder; put the co-culture images (with instance masks) in {co}/")
    found = _folder_images(co, CO_DIR)
    if not found:
        raise UserError(f"{co}: no co-culture images; add images/ + masks/ (or Cellpose's name + name_masks files)")
    return [SourceImage(name, image, mask, group=sub) for name, image, mask, sub in found]


def _image_index(images: list[SourceImage]) -> dict[str, SourceImage]:
    """Names a CSV may use for an image: its path relative to co/, and its file name and stem when unique."""
    index: dict[str, SourceImage] = {}
    counts: dict[str, int] = {}
    for im in images:
        for key in {im.image.name, im.image.stem}:
            counts[key] = counts.get(key, 0) + 1
    for im in images:
        index[im.name[len(CO_DIR) + 1:]] = im
        for key in (im.image.name, im.image.stem):
            if counts[key] == 1:
                index.setdefault(key, im)
    return index


def _safe_name(value: str) -> bool:
    """False for a name that points outside its folder (absolute, `..`, a drive or backslash path)."""
    p = PurePosixPath(value.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (len(value) > 1 and value[1] == ":"))


def _read_csv(path: Path, required: tuple[str, ...], problems: _Problems) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV with the `required` columns; one problem line when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                problems.append(f"{path.name}: missing column(s) {', '.join(missing)}; the header must be {','.join(required)}[,group]")
                return []
            return [(i, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for i, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        problems.append(f"{path.name}: cannot read ({err.__class__.__name__}: {err}); save it as a UTF-8 CSV")
        return []


def _lookup(name: str, where: str, index: dict[str, SourceImage], problems: _Problems) -> SourceImage | None:
    if not _safe_name(name):
        problems.append(f"{where}: image {name!r} escapes the data folder; name images relative to {CO_DIR}/")
        return None
    im = index.get(name) or index.get(PurePosixPath(name).as_posix())
    if im is None:
        problems.append(f"{where}: unknown image {name!r} (no such co-culture image); use its path relative to "
                        f"{CO_DIR}/, its file name or its stem")
    return im


def _set_group(im: SourceImage, group: str, where: str, problems: _Problems) -> None:
    if not group:
        return
    if im.group is not None and im.group != group:
        problems.append(f"{where}: image {im.name} is in group {im.group!r} and {group!r}; give each image one group")
    im.group = group


def _mask_labels(im: SourceImage, cache: dict) -> set[int]:
    if im.name not in cache:
        m = load_mask(im.mask)
        cache[im.name] = set(np.unique(m[m > 0]).tolist())
    return cache[im.name]


# --------------------------------------------------------------------------- co-cultures: the truth


def read_cell_types(path: Path, images: list[SourceImage], problems: _Problems) -> None:
    """cell_types.csv (image,label,type[,group]) into each image's `cell_types`."""
    index, labels = _image_index(images), {}
    for line, row in _read_csv(path, ("image", "label", "type"), problems):
        where = f"{path.name} line {line}"
        im = _lookup(row["image"], where, index, problems)
        if im is None:
            continue
        if im.mask is None:
            problems.append(f"{where}: image {im.name} has no instance mask, so a label names no cell; add its mask or use {POINTS_CSV}")
            continue
        try:
            label = int(row["label"])
        except ValueError:
            problems.append(f"{where}: label {row['label']!r} is not an integer; give the cell's id in the mask")
            continue
        cell_type = row["type"]
        if not cell_type:
            problems.append(f"{where}: empty type; name the cell's type")
            continue
        if label not in _mask_labels(im, labels):
            problems.append(f"{where}: label {label} is not in the mask of {im.name}; give an id that the mask holds")
            continue
        types = im.cell_types if im.cell_types is not None else {}
        if types.get(label, cell_type) != cell_type:
            problems.append(f"{where}: cell {label} of {im.name} is both {types[label]!r} and {cell_type!r}; keep one row")
        types[label] = cell_type
        im.cell_types = types
        _set_group(im, row.get("group", ""), where, problems)
    _check_every_cell_typed(images, labels, problems, path.name)


def _check_every_cell_typed(images: list[SourceImage], labels: dict, problems: _Problems, source: str) -> None:
    for im in images:
        have = set((im.cell_types or {}).keys())
        missing = sorted(_mask_labels(im, labels) - have) if im.mask is not None else []
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            problems.append(f"{im.name}: {len(missing)} cell(s) without a type in {source} (labels {shown}); "
                            "type every cell of the mask, or remove those labels from it")


def read_type_maps(co: Path, images: list[SourceImage], problems: _Problems) -> None:
    """type_maps/<stem>.* + types.txt into each image's `cell_types` (the majority type value inside each cell)."""
    try:
        names = [ln.strip() for ln in (co / TYPES_TXT).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"{CO_DIR}/{TYPES_TXT}: cannot read ({err.__class__.__name__}); list one type name per line (line 1 = value 1)")
        return
    if not names:
        problems.append(f"{CO_DIR}/{TYPES_TXT}: empty; list one type name per line (line 1 = type value 1)")
        return
    maps = {p.stem: p for p in _plain_images(co / TYPE_MAPS_DIR)}
    for im in images:
        where = f"{CO_DIR}/{TYPE_MAPS_DIR}/{im.image.stem}"
        if im.mask is None:
            problems.append(f"{im.name}: no instance mask; a type map types the cells of a mask")
            continue
        if im.image.stem not in maps:
            problems.append(f"{where}.png: missing; give every co-culture image a type map")
            continue
        try:
            mask, tmap = load_mask(im.mask), load_mask(maps[im.image.stem])
        except UserError as err:
            problems.append(str(err))
            continue
        if tmap.shape != mask.shape:
            problems.append(f"{where}: type map is {tmap.shape[1]}x{tmap.shape[0]} px but the mask is "
                            f"{mask.shape[1]}x{mask.shape[0]} px; give it the image's size")
            continue
        im.cell_types = _majority_types(mask, tmap, names, where, problems)


def _majority_types(mask: np.ndarray, tmap: np.ndarray, names: list[str], where: str, problems: _Problems) -> dict[int, str]:
    """{label: type name} by the most frequent non-zero type value inside each cell."""
    out = {}
    for label in np.unique(mask[mask > 0]).tolist():
        values = tmap[mask == label]
        values = values[values > 0]
        if values.size == 0:
            problems.append(f"{where}: cell {label} has no type (type value 0 everywhere inside it); type it or remove it from the mask")
            continue
        value = int(np.bincount(values).argmax())
        if value > len(names):
            problems.append(f"{where}: type value {value} has no name in {TYPES_TXT} ({len(names)} line(s)); add its name")
            continue
        out[int(label)] = check_name(names[value - 1], "cell type")
    return out


def read_points(path: Path, images: list[SourceImage], problems: _Problems) -> None:
    """points.csv (image,x,y,type[,group]) into each image's `points`."""
    from prompts.pairs import image_shape

    index = _image_index(images)
    for im in images:
        im.points = []
    for line, row in _read_csv(path, ("image", "x", "y", "type"), problems):
        where = f"{path.name} line {line}"
        im = _lookup(row["image"], where, index, problems)
        if im is None:
            continue
        try:
            x, y = float(row["x"]), float(row["y"])
        except ValueError:
            problems.append(f"{where}: x {row['x']!r}, y {row['y']!r} are not numbers; give pixel coordinates")
            continue
        h, w = image_shape(im.image)
        if not (0 <= x < w and 0 <= y < h):
            problems.append(f"{where}: point ({x:g}, {y:g}) lies outside {im.name} ({w}x{h} px)")
            continue
        if not row["type"]:
            problems.append(f"{where}: empty type; name the cell's type")
            continue
        im.points.append(Point(x, y, row["type"]))
        _set_group(im, row.get("group", ""), where, problems)


def _truth_sources(co: Path) -> list[str]:
    sources = [CELL_TYPES_CSV] if (co / CELL_TYPES_CSV).is_file() else []
    if (co / TYPE_MAPS_DIR).is_dir():
        sources.append(TYPE_MAPS_DIR)
    if (co / POINTS_CSV).is_file():
        sources.append(POINTS_CSV)
    return sources


# --------------------------------------------------------------------------- the whole folder


def read_data(data_dir) -> PhenotypeData:
    """Read DATA (layout in the module docstring) and check it; a UserError lists every bad input, one per line."""
    root = Path(data_dir) if data_dir else None
    if root is None or not root.is_dir():
        raise UserError(f"data folder {data_dir} does not exist; give a folder with {MONO_DIR}/<type>/ and {CO_DIR}/")
    problems = _Problems()
    mono = read_mono(root, problems)
    co_images = read_co_images(root)
    co = root / CO_DIR
    sources = _truth_sources(co)
    if len(sources) != 1:
        what = "none" if not sources else " and ".join(sources)
        raise UserError(f"{co}: give the co-culture cell types in exactly one way ({CELL_TYPES_CSV}, {TYPE_MAPS_DIR}/ + "
                        f"{TYPES_TXT}, or {POINTS_CSV}); found {what}")
    truth = POINTS if sources[0] == POINTS_CSV else CELLS
    if truth == CELLS and any(im.mask is None for im in co_images):
        raise UserError(f"{co}: co-culture images without instance masks can only be counted from {POINTS_CSV}; add masks "
                        f"(images/ + masks/) or give {POINTS_CSV}")
    {CELL_TYPES_CSV: lambda: read_cell_types(co / CELL_TYPES_CSV, co_images, problems),
     TYPE_MAPS_DIR: lambda: read_type_maps(co, co_images, problems),
     POINTS_CSV: lambda: read_points(co / POINTS_CSV, co_images, problems)}[sources[0]]()
    problems.fail(root)
    co_types = {t for im in co_images for t in (im.cell_types or {}).values()} | {p.type for im in co_images for p in im.points or []}
    for t in sorted(co_types):
        check_name(t, "cell type")
    types = sorted({im.mono_type for im in mono} | co_types)
    notes = [f"type {t} has no monoculture: the zero-shot regime cannot predict it" for t in sorted(co_types)
             if mono and t not in {im.mono_type for im in mono}]
    return PhenotypeData(root, types, mono, co_images, truth, notes)
