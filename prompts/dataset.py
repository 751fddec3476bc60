"""The one dataset reader: a data folder becomes a list of labelled records.

Layouts:
- `DATA/<class>/<image>`                  (images at depth 1)
- `DATA/<cell_line>/<class>/<image>`      (images at depth 2)
- `DATA/labels.csv` with columns `file,label` and optionally `cell_line`, `group`;
  it takes precedence over the folders, and further columns are kept as metadata
  that can name the grouping of folds (`--group-by COLUMN`).

Paths in records are POSIX paths relative to `DATA`.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError
from .images import IMAGE_SUFFIXES, ZARR_SUFFIX, check_decodes, file_of, image_names, is_image_file
from .layout import GROUP_SEP, check_name
from .normalize import DEFAULT, Reading


@dataclass(frozen=True)
class Record:
    """One labelled image. `path` is relative to the data folder."""

    path: str
    label: str
    cell_line: str | None = None
    group: str | None = None
    meta: tuple[tuple[str, str], ...] = ()

    def get(self, column: str) -> str | None:
        if column in ("label", "class"):
            return self.label
        if column == "cell_line":
            return self.cell_line
        if column == "group":
            return self.group
        if column == "file":
            return self.path
        return dict(self.meta).get(column)


@dataclass
class Dataset:
    root: Path
    records: list[Record]
    source: str  # "labels.csv" or "folders"
    skipped: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records})

    @property
    def cell_lines(self) -> list[str]:
        return sorted({r.cell_line for r in self.records if r.cell_line is not None})

    @property
    def columns(self) -> list[str]:
        cols = ["label"]
        if any(r.cell_line for r in self.records):
            cols.append("cell_line")
        if any(r.group for r in self.records):
            cols.append("group")
        cols += sorted({k for r in self.records for k, _ in r.meta})
        return cols

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.records).items()))

    def by_path(self) -> dict[str, Record]:
        return {r.path: r for r in self.records}

    def abspath(self, record_or_path) -> Path:
        rel = record_or_path.path if isinstance(record_or_path, Record) else record_or_path
        return self.root / rel

    def select(self, classes=None, cell_lines=None, paths=None) -> "Dataset":
        """A subset; unknown class or cell-line names are errors."""
        records = self.records
        if classes:
            missing = sorted(set(classes) - set(self.classes))
            if missing:
                raise UserError(
                    f"class {', '.join(missing)} has no images in {self.root} (classes there: {', '.join(self.classes)})"
                )
            records = [r for r in records if r.label in set(classes)]
        if cell_lines:
            missing = sorted(set(cell_lines) - set(self.cell_lines))
            if missing:
                have = ", ".join(self.cell_lines) or "none (use DATA/<cell_line>/<class>/ or a cell_line column)"
                raise UserError(f"cell line {', '.join(missing)} has no images in {self.root} (cell lines there: {have})")
            records = [r for r in records if r.cell_line in set(cell_lines)]
        if paths is not None:
            wanted = set(paths)
            records = [r for r in records if r.path in wanted]
        return Dataset(self.root, records, self.source, self.skipped)


def _walk(root: Path):
    """os.walk that follows symlinked folders (a class folder linked from elsewhere is a common lab
    layout) but visits each real folder once, so a link loop cannot recurse forever."""
    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            if any(is_image_file(n) for n in filenames):  # one folder of images under two names: two labels for them
                a, b = sorted(str(Path(p).relative_to(root)) for p in (seen[(st.st_dev, st.st_ino)], dirpath))
                raise UserError(f"{a} and {b} in {root} are the same folder (a symbolic "
                                "link): its images would have two labels; remove the link or copy the images")
            dirnames[:] = []
            continue
        seen[(st.st_dev, st.st_ino)] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def _dead_link(path: Path) -> str:
    """The line for an image name that is a symbolic link leading nowhere (a loop, or a missing target)."""
    return (f"{path} is a symbolic link that leads to no file (a link loop or a missing target); "
            "remove the link or point it at an image, or pass --skip-bad-images to skip it")


def _scan_folders(root: Path, skipped: list[str] | None = None) -> list[Record]:
    """Records of DATA/<class>/<image> or DATA/<cell_line>/<class>/<image>. A dead symbolic link named like an
    image is refused, or listed in `skipped` (data-relative) when that list is given (--skip-bad-images)."""
    found: list[tuple[tuple[str, ...], str]] = []
    folders: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in _walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        folders.append(rel_dir.parts)
        zarrs = [d for d in dirnames if d.lower().endswith(ZARR_SUFFIX)]  # an OME-Zarr folder is one image file
        dirnames[:] = [d for d in dirnames if d not in zarrs]
        for name in sorted(filenames + zarrs):
            if not is_image_file(name):
                continue
            if not os.path.exists(os.path.join(dirpath, name)):  # os.walk lists a looping or dangling link as a file
                if skipped is None:
                    raise UserError(_dead_link(Path(dirpath) / name))
                skipped.append("/".join((*rel_dir.parts, name)))
                continue
            found.append((rel_dir.parts, name))
    if not found:
        return []
    depths = Counter(len(parts) for parts, _ in found)
    if 0 in depths:
        raise UserError(
            f"{root} holds images directly; put them in DATA/<class>/ or DATA/<cell_line>/<class>/, or list them in {root}/labels.csv"
        )
    if len(depths) > 1 or max(depths) > 2:
        raise UserError(
            f"{root} mixes image depths {sorted(depths)}; use DATA/<class>/<image> or DATA/<cell_line>/<class>/<image> throughout, or a labels.csv"
        )
    depth = max(depths)
    with_images = {parts for parts, _ in found}
    empty = sorted(p for p in folders if len(p) == depth and p not in with_images)
    if empty:
        raise UserError(f"class folder {root / Path(*empty[0])} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        "add images or move the folder out of the data folder")
    records = []
    for parts, name in found:
        rel = "/".join((*parts, name))
        if len(parts) == 1:
            records.append(Record(rel, check_name(parts[0], "class")))
        else:
            records.append(Record(rel, check_name(parts[1], "class"), cell_line=_check_cell_line(parts[0], f"cell line folder {root / parts[0]}:")))
    return records


def _check_cell_line(value: str, what: str = "cell line") -> str:
    check_name(value, what)
    if GROUP_SEP in value:
        raise UserError(f"{what} {value!r} contains '{GROUP_SEP}', which separates cell line and class in "
                        "LoRA folder names; rename it (e.g. one underscore)")
    return value


def _check_entry(rel: str, csv_path: Path, lineno: int) -> str:
    """A labels.csv `file` entry: relative, inside the data folder (no `..`), POSIX separators."""
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or any(part == ".." for part in rel.split("/")):
        raise UserError(f"{csv_path}:{lineno}: file {rel!r} points outside the data folder; list files by their path "
                        "relative to the folder that holds labels.csv (no '..', no absolute paths)")
    return "/".join(part for part in rel.split("/") if part not in ("", "."))


def _read_labels_csv(root: Path, csv_path: Path) -> list[Record]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for need in ("file", "label"):
            if need not in columns:
                raise UserError(f"{csv_path} has no '{need}' column (columns: {', '.join(columns)}); it needs file,label")
        extra = [c for c in columns if c not in ("file", "label", "cell_line", "group")]
        records, seen = [], set()
        for lineno, row in enumerate(reader, start=2):
            rel = (row["file"] or "").strip().replace("\\", "/")
            label = (row["label"] or "").strip()
            if not rel or not label:
                raise UserError(f"{csv_path}:{lineno}: empty file or label")
            rel = _check_entry(rel, csv_path, lineno)
            if rel in seen:
                raise UserError(f"{csv_path}:{lineno}: {rel} is listed twice")
            seen.add(rel)
            on_disk = root / file_of(rel)
            if not (on_disk.is_file() or (on_disk.is_dir() and on_disk.name.lower().endswith(ZARR_SUFFIX))):
                raise UserError(f"{csv_path}:{lineno}: {file_of(rel)} does not exist under {root}")
            if not is_image_file(file_of(rel)):
                raise UserError(f"{csv_path}:{lineno}: {rel} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
            cell_line = (row.get("cell_line") or "").strip() or None
            records.append(
                Record(
                    rel,
                    _named(check_name, label, "class", csv_path, lineno),
                    cell_line=_named(_check_cell_line, cell_line, "cell line", csv_path, lineno) if cell_line else None,
                    group=(row.get("group") or "").strip() or None,
                    meta=tuple((c, (row.get(c) or "").strip()) for c in extra),
                )
            )
    return records


def _expand_scenes(root: Path, records: list[Record], reading: Reading = DEFAULT, skipped: list[str] | None = None) -> list[Record]:
    """One record per image: a multi-scene lab file gives 'file.czi#scene-1', 'file.czi#scene-2', ...
    (and with data.t each, '#t-K' per time point). Names already carrying a fragment (labels.csv) stay.

    A file whose scenes cannot be read is refused, or listed in `skipped` when that list is given."""
    out = []
    for r in records:
        if file_of(r.path) != r.path:
            out.append(r)
            continue
        try:
            out += [replace(r, path=name) for name in image_names(root / r.path, r.path, reading)]
        except UserError:
            if skipped is None:
                raise
            skipped.append(r.path)
    return out


def _named(check, value, what, csv_path, lineno):
    """`check(value, what)` with the file and line in front of its error."""
    try:
        return check(value, what)
    except UserError as err:
        raise UserError(f"{csv_path}:{lineno}: {err}") from None


def list_images(root: str | os.PathLike, *, skip_bad_images: bool = False, reading: Reading = DEFAULT) -> Dataset:
    """The labelled image names of a data folder, from names and headers only (no pixel decoded).

    skip_bad_images: a dead link or a file whose scenes cannot be read is listed in `Dataset.skipped`
    instead of refused. reading: the study's rule (`from_section(data)`; its `t: each` makes one image per time
    point; default: the default rule).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; pass --data DIR with DIR/<class>/<images>")
    skipped: list[str] | None = [] if skip_bad_images else None
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        records, source = _read_labels_csv(root, csv_path), "labels.csv"
    else:
        records, source = _scan_folders(root, skipped), "folders"
    if not records:
        raise UserError(f"data folder {root} holds no images ({', '.join(('jpg', 'png', 'tif', 'bmp', 'czi', 'nd2', 'lif', 'zarr'))}); "
                        "expected DATA/<class>/<images>")
    records = _expand_scenes(root, records, reading, skipped)
    records.sort(key=lambda r: r.path)
    return Dataset(root, records, source, skipped or [])


def read_dataset(root: str | os.PathLike, *, check_images: bool = False, skip_bad_images: bool = False,
                 reading: Reading = DEFAULT) -> Dataset:
    """Read a data folder into a `Dataset`.

    check_images: decode every image once (names the first bad file). skip_bad_images: decode every image
    once and leave out, with a warning that lists them, those that cannot be read right (corrupt, truncated,
    NaN pixels, too large, a channel or plane the rule asks for missing, a dead link). reading: the study's rule
    (`from_section(data)`; default: the default rule). Every command passes its own.
    """
    dataset = list_images(root, skip_bad_images=skip_bad_images, reading=reading)
    skipped = list(dataset.skipped)
    records = dataset.records
    first_reason = ""
    if check_images or skip_bad_images:
        good = []
        for r in records:
            try:
                check_decodes(dataset.root / r.path, reading)
                good.append(r)
            except UserError as err:
                if not skip_bad_images:
                    raise
                skipped.append(r.path)
                first_reason = first_reason or str(err)
        records = good
    if skipped and not records:
        raise UserError(f"data folder {dataset.root}: all {len(skipped)} images were skipped (--skip-bad-images), e.g. "
                        + (first_reason or f"{skipped[0]!r}"))
    if skipped:
        import logging

        shown = ", ".join(repr(p) if not p.isprintable() else p for p in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        logging.getLogger(__name__).warning("skipped %d image(s) that cannot be read right (--skip-bad-images): %s%s",
                                            len(skipped), shown, more)
    return Dataset(dataset.root, records, dataset.source, skipped)


PAIRS_SOURCE = "pairs"  # Dataset.source of image-mask pairs
NO_CLASS = "cells"  # the label of pairs that belong to no class or cell line


def pairs_dataset(root, pairs) -> Dataset:
    """Image-mask pairs as a Dataset of their images, so that one `make_split` and `read_split` serve them.

    Parameters
    ----------
    root : path
        The data folder the pairs were read from.
    pairs : list of prompts.pairs.Pair
        `Pair.name` (data-relative) becomes the record's path; its class (`Pair.label`, else 'cells')
        the record's label; its group is the pairs CSV's `group` column when given, else its class.
    """
    records = [Record(p.name, p.label or NO_CLASS, group=getattr(p, "group", None) or p.label) for p in pairs]
    return Dataset(Path(root), records, PAIRS_SOURCE)


def group_keys(dataset: Dataset, group_by: str | None) -> list[str] | None:
    """The fold-group of each record, in record order, or None without grouping.

    group_by: `cell_line`, `group`, any labels.csv column, or `regex:PATTERN`
    (the first match of PATTERN in the file name, or its first capture group;
    for example `regex:^\\d{8}` groups by an acquisition-date prefix).
    """
    if not group_by:
        return None
    if group_by.startswith("regex:"):
        pattern = group_by[len("regex:"):]
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserError(f"--group-by {group_by}: invalid regular expression: {err}") from None
        keys = []
        for r in dataset.records:
            m = rx.search(os.path.basename(r.path))
            if not m:
                raise UserError(f"--group-by {group_by}: no match in file name {r.path}; fix the pattern")
            keys.append(m.group(1) if m.groups() else m.group(0))
        return keys
    if group_by not in dataset.columns:
        raise UserError(
            f"--group-by {group_by}: no such column in {dataset.root} (columns: {', '.join(dataset.columns)}, or regex:PATTERN)"
        )
    keys = [r.get(group_by) for r in dataset.records]
    missing = [r.path for r, k in zip(dataset.records, keys) if not k]
    if missing:
        raise UserError(f"--group-by {group_by}: {len(missing)} image(s) have no value, e.g. {missing[0]}")
    return keys
