"""Small helpers shared by the promise tests."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (hidden ones too, symlinks followed), plus empty folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        rel = Path(dirpath).relative_to(folder)
        if not dirnames and not filenames:
            out[f"{rel}/"] = "dir"
        for name in filenames:
            out[str(rel / name)] = hashlib.sha256((Path(dirpath) / name).read_bytes()).hexdigest()
    return out


def help_flags(text: str) -> set[str]:
    """Every option string of an argparse --help text, as exact tokens (the option lines, not the usage or prose).

    `--fold` is not found in a help that has only `--folds`, as a substring test would find it.
    """
    import re

    flags = set()
    for line in text.splitlines():
        m = re.match(r"^\s{2,}(-\S.*?)(?:\s{2,}|$)", line)
        if m:
            flags.update(re.findall(r"(?:^|,\s)(--?[A-Za-z0-9][\w-]*)", m.group(1)))
    return flags
