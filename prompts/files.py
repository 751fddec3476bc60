"""Atomic writes and content hashes, so that a killed run never leaves half a file."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it over `path`.

    The temporary file keeps the suffix of `path` so that writers that choose a
    format by extension (PIL, safetensors) still work. On error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_dir_beside(target: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder beside `target`, to build an output in and rename into place.

    Unlike a bare `mkdtemp` (mode 0700), it gets the usual permissions, so the
    output folder it becomes is readable like any other.
    """
    parent = Path(target).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")


def _unique_key_loader():
    """yaml.SafeLoader that refuses a key written twice in one mapping (YAML would keep the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is written twice; keep one", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    # YAML 1.1 reads 1e-4 (no dot) as a string; learning rates are written that way, so read it as a number.
    UniqueKeyLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))
    return UniqueKeyLoader


def read_yaml_mapping(path: str | os.PathLike, what: str, hint: str = "") -> dict:
    """A YAML file (safe loader, no duplicate keys) that must hold a mapping; errors name `what` and the file.

    An empty file is an empty mapping.
    """
    import yaml

    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise UserError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise UserError(f"{what} {path} must be a mapping of keys, got {type(raw).__name__}")
    return raw


def read_json_mapping(path: str | os.PathLike, what: str, hint: str) -> dict:
    """A JSON file that must hold an object; errors name `what`, the file and `hint` (what to do)."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {hint}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err}); {hint}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} must hold a JSON object; {hint}")
    return obj
