"""Where outputs may go: never into the user's data, never over a file the tool did not write.

Every command calls these before it writes anything, so a bad output path is one line and exit
status 2 with nothing written.

The ownership rule, in one place: an existing path is replaced only when `prompts.fingerprint.written_by`
says this toolkit wrote it, and only with `--overwrite`. Anything else is the user's: it is refused
with one line, and that line suggests `--overwrite` only where `--overwrite` would succeed.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import fingerprint
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


def check_file_target(path, *, data=None, flag: str = "--output") -> Path:
    """`path` as a Path if a file may be written there at all: given, not in `data`, not a folder, writable."""
    if path is None or str(path) == "":
        raise UserError(f"{flag} is missing: give an output file")
    path = Path(path)
    _check_not_in_data(path, data, flag)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    _check_writable(path.parent, flag)
    return path


def check_new_file(path, *, overwrite: bool | None = None, data=None, flag: str = "--output") -> Path:
    """`path` as a Path if a file may be written there: not in `data`, not a folder, and when it exists,
    a file this toolkit wrote and `overwrite` given (None: the command has no --overwrite to suggest)."""
    path = check_file_target(path, data=data, flag=flag)
    check_replace(path, overwrite=overwrite, flag=flag)
    return path


def refuse_foreign(path, *, flag: str = "--output") -> None:
    """One-line UserError when `path` exists and this toolkit did not write it (whatever --overwrite says)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and fingerprint.written_by(path) is None:
        kind = "folder" if path.is_dir() and not path.is_symlink() else "file"
        raise UserError(f"{flag}: {path} exists and is a {kind} this tool did not write; it is left untouched "
                        f"(--overwrite replaces only the tool's own outputs): move it away or choose another {flag}")


def check_replace(path, *, overwrite: bool | None, flag: str = "--output") -> None:
    """Nothing at `path`, or the tool's own output and `overwrite` given; else one line saying what to do.

    overwrite None: the command has no --overwrite, so the line does not suggest one.
    """
    path = Path(path)
    refuse_foreign(path, flag=flag)
    if path.exists() and not overwrite:
        hint = "pass --overwrite to replace it, or choose another name" if overwrite is not None else \
            "move it away or choose another name"
        raise UserError(f"{flag}: {path} exists ({fingerprint.written_by(path)} wrote it); {hint}")


def check_outputs(folder, names, *, flag: str = "--output") -> None:
    """Refuse when any of `names` inside `folder` exists and is not the tool's own (the command decides itself
    about its own outputs, e.g. to resume or to replace them with --overwrite)."""
    for name in names:
        refuse_foreign(Path(folder) / name, flag=flag)
