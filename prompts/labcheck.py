"""What the study check reads of the data's lab files before any job: their headers, not their pixels.

`data.channels` (names and indices), `data.z`, `data.t` and scenes are tested against what the files
declare, with the decoder's own functions (`prompts.images.check_reading`), so the check and the first
job that decodes pixels give the same line.

Which files (a data folder usually holds one layout):
- every image when the data holds at most `SMALL_FOLDER` files;
- otherwise the first image of each class (or pair group) and each distinct extension.
TIFFs with the same tifffile signature (OME-XML sizes and channel names, or series shapes) share one bioio
header read, since reading OME metadata through bioio costs tens of milliseconds a file.

Pillow files (JPEG, PNG, BMP, one plain TIFF page) are not read: channels, z and t do not apply to them.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .errors import UserError

SMALL_FOLDER = 200  # files; above it, one file per class and extension


def _extension(name: str) -> str:
    lower = name.lower()
    for double in (".ome.tif", ".ome.tiff", ".ome.zarr"):
        if lower.endswith(double):
            return double
    return os.path.splitext(lower)[1]


def sample(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (image name, group) pairs whose headers are read: all of them for a small folder, else the first of
    each group and extension."""
    from .images import file_of

    if len({file_of(name) for name, _ in items}) <= SMALL_FOLDER:
        return list(items)
    seen, out = set(), []
    for name, group in items:
        key = (group, _extension(file_of(name)))
        if key not in seen:
            seen.add(key)
            out.append((name, group))
    return out


def _kind(message: str) -> str:
    """Which key an error line is about, so that each is said once (for its first file)."""
    for needle, kind in (("data.channels", "channels"), ("choose up to three", "channels"), ("data.z ", "z"),
                         ("data.t ", "t"), ("scene", "scene"), ("too large", "size"), ("chunk files", "chunks")):
        if needle in message:
            return kind
    return "file"


def _headers(root: Path, names: list[str], reading):
    """[(name, Header or None, error line or None)] for the lab files among `names`."""
    from .images import check_reading, read_header, split_name, tiff_signature, uses_pillow

    read: dict[tuple, tuple] = {}  # signature -> (name, header, error) of the first file with it
    out = []
    for name in names:
        path = root / name
        try:
            if uses_pillow(path):
                continue
        except UserError:
            pass  # bioio below names the problem
        base, scene, _ = split_name(str(path))
        signature = tiff_signature(Path(base))
        key = (signature, scene) if signature is not None else None
        if key is not None and key in read:
            header = replace(read[key][1], path=Path(base))  # the same layout: its lines name this file
        else:
            try:
                header = read_header(path)
            except UserError as err:
                out.append((name, None, str(err)))
                continue
            if key is not None:
                read[key] = (name, header, None)
        try:
            check_reading(header, path, reading)
            out.append((name, header, None))
        except UserError as err:
            out.append((name, header, str(err)))
    return out


def check_lab_files(root: str | os.PathLike, items: list[tuple[str, str]], reading, skip_bad_images: bool = False) -> list[str]:
    """Every error the reading rule would meet in the data's lab files, one line per key, from headers only.

    Parameters
    ----------
    root : the data folder.
    items : (image name relative to root, class or group) of every image the study reads.
    reading : the study's `Reading`.
    skip_bad_images : the jobs skip files they cannot read right; then only an error of every file read is one.

    Returns
    -------
    list of str
        The decoder's own line for the first file of each failing key (channels, z, t, scene, size, chunks,
        an unreadable file). When the files mix channel layouts, the channel line also names a file of the
        other layout.
    """
    root = Path(root)
    results = _headers(root, [name for name, _ in sample(items)], reading)
    failures = [(name, header, error) for name, header, error in results if error]
    passes = [(name, header) for name, header, error in results if not error]
    if not failures or (skip_bad_images and passes):
        return []
    lines, said = [], set()
    for name, header, error in failures:
        kind = _kind(error)
        if kind in said:
            continue
        said.add(kind)
        if kind == "channels" and header is not None:
            other = _other_layout(header, [*passes, *((n, h) for n, h, _ in failures if h is not None)])
            if other is not None:
                error += (f"; the data mixes channel layouts: {root / other[0]} has channels {', '.join(other[1].channels)}: "
                          "choose channels every file has, or keep one layout per data folder")
        lines.append(error)
    return lines


def _other_layout(header, named_headers):
    """The first (name, header) whose channels differ from `header`'s, or None."""
    return next(((n, h) for n, h in named_headers if h.channels != header.channels), None)


def check_commands(reading, commands, init_images: str = "none") -> list[str]:
    """The line of the first of `commands` that cannot apply the reading rule (percentile-dataset), or []."""
    from .normalize import check_supported

    for command in commands:
        try:
            check_supported(reading, command, init_images)
        except UserError as err:
            return [str(err)]
    return []
