"""Where outputs may go: never into the user's data, never over a file without --overwrite.

Every command calls these before it writes anything, so a bad output path is one line and exit
status 2 with nothing written.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def _real(path) -> Path:
    """The absolute path with symlinks of its existing part resolved."""
    return Path(os.path.realpath(os.path.abspath(path)))


def is_inside(path, folder) -> bool:
    """True when `path` is `folder` or lies under it (after resolving symlinks)."""
    p, f = _real(path), _real(folder)
    return p == f or f in p.parents


def _nearest_existing(path: Path) -> Path:
    p = _real(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_not_in_data(path, data, flag: str) -> None:
    if data is not None and is_inside(path, data):
        raise UserError(f"{flag} {path} is inside the data folder {data}; outputs never go into your data: "
                        "choose a folder outside it")


def _check_writable(path: Path, flag: str) -> None:
    parent = _nearest_existing(path)
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is an existing file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {parent}; choose a folder you can write to")


def check_output_dir(out, *, data=None, flag: str = "--output") -> Path:
    """`out` as a Path if it can be an output folder: not inside (or equal to) `data`, not a file, writable."""
    if out is None or str(out) == "":
        raise UserError(f"{flag} is missing: give an output folder")
    out = Path(out)
    _check_not_in_data(out, data, flag)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is an existing file; give a folder")
    _check_writable(out, flag)
    return out


def check_new_file(path, *, overwrite: bool = False, data=None, flag: str = "--output") -> Path:
    """`path` as a Path if a file may be written there: not in `data`, not a folder, not replacing a file unasked."""
    if path is None or str(path) == "":
        raise UserError(f"{flag} is missing: give an output file")
    path = Path(path)
    _check_not_in_data(path, data, flag)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another name")
    _check_writable(path.parent, flag)
    return path
