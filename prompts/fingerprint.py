"""Fingerprints: what determined an output, so that resume and reuse happen only when nothing changed.

A fingerprint is a JSON mapping written as `fingerprint.json` beside (or inside) an output:

    {"version": 1,
     "parts": {"settings": "<digest>", "model": "<digest>", "images": "<digest>", "split": "<digest>", ...},
     ...further top-level records a reader needs (e.g. "images": {data-relative path: sha256})}

Each part is a short digest of one input: the result-changing settings of a schema section
(`settings_part`), the content of files (`files_part`), a base model (`model_part`). Comparing two
fingerprints part by part says *what* changed (`diff`), which is what the user needs to decide.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path

from .errors import UserError
from .files import sha256_file, write_json_atomic

VERSION = 1
_CACHE_LOCK = threading.Lock()
_MEMO: dict[tuple, str] = {}


def digest(obj) -> str:
    """A short stable digest (16 hex) of a JSON-able value."""
    text = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def settings_part(section) -> dict:
    """The fields of a schema section marked as changing the result ({name: value})."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.metadata.get("result", True)}


def reading_part(reading=None) -> dict:
    """How real images are read (`data` section: normalisation, channels, planes; fitted levels), as recorded.

    Every fingerprint of an output made from real pixels carries it, so a changed rule re-runs what it affects."""
    from .images import current_reading

    return (reading or current_reading()).record()


# --------------------------------------------------------------------------- file content hashes

def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellsynth" / "hashes.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def file_sha256(path) -> str:
    """sha256 of a file's bytes, cached by (real path, size, mtime) in memory and on disk.

    A base model of several GB is hashed once; a changed file (size or mtime) is hashed again.
    An image name 'file.czi#scene-2' is the file's hash with its fragment; an OME-Zarr folder is the
    digest of its files' hashes (the same rule as `files_part`).
    """
    from .images import file_of

    base = file_of(path)
    if base != str(path):
        return hashlib.sha256(f"{file_sha256(base)}{str(path)[len(base):]}".encode()).hexdigest()
    if os.path.isdir(path):
        files = sorted(f for f in Path(path).rglob("*") if f.is_file())
        return hashlib.sha256(json.dumps(files_part([f.relative_to(path) for f in files], root=path)).encode()).hexdigest()
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    skey = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    small = st.st_size < (1 << 20)  # small files: hashing is cheaper than the cache file
    if not small:
        cached = _load_cache().get(skey)
        if cached:
            _MEMO[key] = cached
            return cached
    value = sha256_file(real)
    _MEMO[key] = value
    if not small:
        with _CACHE_LOCK:
            cache = _load_cache()
            cache[skey] = value
            try:
                write_json_atomic(_cache_file(), cache)
            except OSError:
                pass  # a read-only cache only costs time
    return value


def files_part(paths, root=None) -> dict[str, str]:
    """{name: sha256} of files; names are relative to `root` when given (POSIX), else as given."""
    out = {}
    for p in paths:
        p = Path(p)
        full = Path(root) / p if root is not None and not p.is_absolute() else p
        name = p.as_posix() if root is not None else str(p)
        out[name] = file_sha256(full)
    return dict(sorted(out.items()))


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")


def model_part(model: str | None) -> str | None:
    """A digest of a base model: its weight and config files (folder or single file), or a hub id as given."""
    if not model:
        return None
    p = Path(model)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES and not f.name.startswith("."))
        return digest(files_part([f.relative_to(p) for f in files], root=p))
    return f"hub:{model}"


# --------------------------------------------------------------------------- fingerprints

def make(**parts) -> dict:
    """A fingerprint from named parts (any JSON-able values; each is stored as its digest)."""
    return {"version": VERSION, "parts": {name: digest(value) for name, value in sorted(parts.items())}}


def diff(recorded: dict | None, current: dict) -> list[str]:
    """Names of the parts that differ (or are missing on either side); [] when equal."""
    if not recorded or recorded.get("version") != current.get("version"):
        return ["all (no fingerprint of a compatible version was recorded)"]
    a, b = recorded.get("parts", {}), current.get("parts", {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def check(recorded: dict | None, current: dict, what: str, hint: str) -> None:
    """One-line UserError when the fingerprints differ: what changed and what to do."""
    changed = diff(recorded, current)
    if changed:
        raise UserError(f"{what} was made from other inputs ({', '.join(changed)} changed since); {hint}")


def read(path) -> dict | None:
    """A fingerprint file, or None when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(path, fp: dict) -> None:
    write_json_atomic(path, fp)
