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


def reading_part(reading) -> dict:
    """How real images are read (`data` section: normalisation, channels, planes; fitted levels), as recorded.

    Every fingerprint of an output made from real pixels carries it, so a changed rule re-runs what it affects.

    Parameters
    ----------
    reading : prompts.normalize.Reading
        The rule the output's pixels were read with (the command's study file; never a process-wide one).

    Returns
    -------
    dict
        `reading.record()`: normalize, percentiles, channels, z, t (and fitted levels).
    """
    return reading.record()


# --------------------------------------------------------------------------- file content hashes

def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellsynth" / "hashes.jsonl"


class _HashCache:
    """The on-disk cache of large files' sha256: an append-only JSON-lines file, one `{"key", "sha256"}` per line.

    Each new hash is one O_APPEND write of one line, so several processes (the jobs of a study) add to it at once
    without a lock and without rewriting it; a reader keeps what it has read and reads only the lines added since,
    so the cost stays linear in the number of files. A torn last line (a process killed mid-write) is skipped, and
    the next line written starts on a line of its own.
    """

    def __init__(self):
        self.path: Path | None = None
        self.offset = 0
        self.entries: dict[str, str] = {}

    def _reset_if_moved(self) -> None:
        path = _cache_file()
        if path != self.path:  # XDG_CACHE_HOME changed (tests, another study's cache): start over
            self.path, self.offset, self.entries = path, 0, {}
            self._read_legacy(path.with_name("hashes.json"))

    def _read_legacy(self, path: Path) -> None:
        """Hashes from the older whole-JSON cache file, read once (it is no longer written)."""
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(old, dict):
            self.entries.update({k: v for k, v in old.items() if isinstance(k, str) and isinstance(v, str)})

    def _read_new_lines(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written (or torn): later
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self.entries[rec["key"]] = rec["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line glued to the next one, or foreign text: skipped
        self.offset += end

    def get(self, key: str) -> str | None:
        self._reset_if_moved()
        if key not in self.entries:
            self._read_new_lines()
        return self.entries.get(key)

    def put(self, key: str, value: str) -> None:
        self._reset_if_moved()
        self.entries[key] = value
        line = (json.dumps({"key": key, "sha256": value}, ensure_ascii=True) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # after a torn line: start a line of our own
                os.write(fd, line)  # one write with O_APPEND: lines of several processes do not interleave
            finally:
                os.close(fd)
        except OSError:
            pass  # a read-only cache only costs time


_DISK = _HashCache()


def file_sha256(path) -> str:
    """sha256 of a file's bytes, cached by (real path, size, mtime) in memory and on disk.

    A base model of several GB is hashed once per machine (and user): every later job, of this study or
    another, reads its hash from the cache (`_HashCache`); a changed file (size or mtime) is hashed again.
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
        with _CACHE_LOCK:
            cached = _DISK.get(skey)
        if cached:
            _MEMO[key] = cached
            return cached
    value = sha256_file(real)
    _MEMO[key] = value
    if not small:
        with _CACHE_LOCK:
            _DISK.put(skey, value)
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


# --------------------------------------------------------------------------- ownership: what this toolkit wrote
#
# `--overwrite` replaces only files and folders this toolkit wrote. A path is ours when
# - its own content says so: a JSON object with "written_by": "cellsynth <command>", a safetensors
#   file with the same key in its metadata, a PNG with a `cellsynth` text chunk (generate's
#   provenance), a fingerprint or outputs record of this module; or
# - the outputs record of its folder (`layout.OUTPUTS_FILE`) lists its name: a command claims a name
#   there *before* it writes it, so a killed run never leaves a file of ours that looks foreign.
# `prompts.guard` applies the rule; nothing else decides what may be replaced.

WRITTEN_BY = "written_by"
MARK = "cellsynth"
PNG_CHUNK = "cellsynth"  # generate.provenance.CHUNK: the image's manifest record


def mark(command: str) -> str:
    """The value of WRITTEN_BY for `command`: 'cellsynth classify split'."""
    return f"{MARK} {command}"


def stamp(obj: dict, command: str) -> dict:
    """`obj` with WRITTEN_BY first: a JSON output that says who wrote it."""
    return {WRITTEN_BY: mark(command), **{k: v for k, v in obj.items() if k != WRITTEN_BY}}


def write_json(path, obj: dict, command: str) -> None:
    """Write a JSON output atomically, stamped as written by `command`."""
    write_json_atomic(path, stamp(obj, command))


def _outputs_file(folder) -> Path:
    from .layout import OUTPUTS_FILE

    return Path(folder) / OUTPUTS_FILE


def claimed(folder) -> dict[str, str]:
    """{name: command} of the outputs `folder`'s record lists ({} when there is none or it is not ours)."""
    rec = read(_outputs_file(folder))
    if not rec or not str(rec.get(WRITTEN_BY, "")).startswith(MARK) or not isinstance(rec.get("outputs"), dict):
        return {}
    return {str(k): str(v) for k, v in rec["outputs"].items()}


def claim(folder, names, command: str) -> None:
    """Record in `folder` that `command` writes `names` there; call it after every check, before the writes."""
    folder = Path(folder)
    outputs = claimed(folder)
    record = _outputs_file(folder)
    if (record.exists() or record.is_symlink()) and not outputs and _json_mark(record) is None:
        raise UserError(f"{record} exists and is not a record this tool wrote; it is left untouched: move it away "
                        "or choose another output folder")
    new = {**outputs, **{str(n): mark(command) for n in names}}
    if new != outputs or not _outputs_file(folder).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(_outputs_file(folder), {"outputs": dict(sorted(new.items()))}, "outputs record")


def _json_mark(path: Path) -> str | None:
    try:
        if path.stat().st_size > 64 << 20:  # not one of our JSON outputs
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    value = obj.get(WRITTEN_BY)
    if isinstance(value, str) and value.startswith(MARK):
        return value
    if path.name == _fingerprint_name() and "version" in obj and isinstance(obj.get("parts"), dict):
        return f"{MARK} fingerprint"
    return None


def _fingerprint_name() -> str:
    from .layout import FINGERPRINT_FILE

    return FINGERPRINT_FILE


def _png_mark(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}) or {}
    except (OSError, ValueError, SyntaxError):
        return None
    return f"{MARK} generate" if PNG_CHUNK in text else None


def _safetensors_mark(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            value = (f.metadata() or {}).get(WRITTEN_BY)
    except Exception:  # noqa: BLE001 - safetensors raises its own types for any damage: not ours to judge, not ours
        return None
    return value if isinstance(value, str) and value.startswith(MARK) else None


def written_by(path) -> str | None:
    """Who wrote `path` ('cellsynth <command>'), or None when it is not ours (or does not exist).

    A symlink is never ours: replacing it could reach whatever it points to.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return None
    owner = claimed(path.parent).get(path.name)
    if owner:
        return owner
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json_mark(path)
    if suffix == ".png":
        return _png_mark(path)
    if suffix == ".safetensors":
        return _safetensors_mark(path)
    return None


# --------------------------------------------------------------------------- manifests: one JSON record per output file
#
# A manifest (`layout.MANIFEST_FILE`, JSON lines) lists the files a command made, one record each, with the
# command's version string in "version". Lines are appended while a run goes and the file is rewritten
# whole (atomically) from the outputs themselves at the start and end of a run.

def append_manifest(path, rec: dict) -> None:
    """Append one record as one line with a single O_APPEND write (safe with several processes)."""
    data = (json.dumps(rec, sort_keys=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_manifest(path, records: list[dict]) -> None:
    """Write the manifest atomically: one line per record, in the order given."""
    from .files import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records))


def is_our_manifest(path, version_prefix: str = MARK) -> bool:
    """True when every line of an existing manifest is a record whose "version" starts with `version_prefix`.

    An empty file counts as ours; so does a last line cut short by a kill (it is rewritten), never anything else.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            if i == len(lines) - 1 and line.startswith('{"file": '):
                continue
            return False
        if line.strip() and not (isinstance(rec, dict) and str(rec.get("version", "")).startswith(version_prefix)):
            return False
    return True
