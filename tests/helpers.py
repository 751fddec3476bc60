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
