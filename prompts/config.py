"""The study YAML file: sections `data`, `lora`, `generate`, `classify`.

Each section is a dataclass in `prompts.schema` (one schema for the whole
study). Every command reads the whole file, so a typo in any section is caught
by whichever command runs first. Command-line flags override the file: a flag
whose value is None (not given) leaves the file's value.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError
from .files import read_yaml_mapping
from .schema import SECTIONS


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace(" | ", " or ")


def check_type(value, tp, where: str):
    """Validate (and lightly coerce: int to float) `value` against annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_type(value, arg, where)
            except UserError as err:
                errors.append(err)
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{where}: must be one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is allowed
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {where}")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def build_section(cls, values: dict, where: str):
    """A section dataclass from a mapping; unknown keys and wrong types name the key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: must be a mapping of keys, got {type(values).__name__}")
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


@dataclasses.dataclass
class Study:
    """The whole study file, one dataclass per section."""

    data: typing.Any
    lora: typing.Any
    generate: typing.Any
    classify: typing.Any
    path: Path | None = None


def load_study(path: str | os.PathLike | None) -> Study:
    """Read and validate a study YAML file (safe loader); None gives all defaults."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path, "config file")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise UserError(f"config file {path}: unknown section '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    where = str(path) + ": " if path else ""
    sections = {name: build_section(cls, raw.get(name), f"{where}{name}") for name, cls in SECTIONS.items()}
    study = Study(**sections, path=path)
    study = _resolve_paths(study)
    return study


def _resolve_paths(study: Study) -> Study:
    """Relative paths in a config file are relative to that file's folder."""
    if study.path is None:
        return study
    base = study.path.parent
    for name in SECTIONS:
        section = getattr(study, name)
        for f in dataclasses.fields(section):
            if f.metadata.get("path"):
                value = getattr(section, f.name)
                if isinstance(value, str) and value and not os.path.isabs(value) and not _looks_like_hub_id(value, f):
                    setattr(section, f.name, str(base / value))
    return study


def _looks_like_hub_id(value: str, f) -> bool:
    return bool(f.metadata.get("hub")) and not os.path.exists(value) and value.count("/") == 1 and not value.startswith(".")


def apply_overrides(section, args, where: str = "flag"):
    """Copy non-None attributes of an argparse namespace onto a section, type-checked."""
    hints = _hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(args, f.name, None)
        if value is not None:
            flag = "--" + f.name.replace("_", "-")
            setattr(section, f.name, check_type(value, hints[f.name], flag))
    return section


def as_dict(section) -> dict:
    return dataclasses.asdict(section)


def dump_yaml(study_or_sections: dict) -> str:
    return yaml.safe_dump(study_or_sections, sort_keys=False, default_flow_style=None)


def describe_schema() -> str:
    """Markdown of every section, key, type and default (for the README)."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"### `{name}`\n")
        lines.append("| key | type | default | meaning |")
        lines.append("| --- | --- | --- | --- |")
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"| `{f.name}` | {_type_name(hints[f.name])} | `{default!r}` | {f.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines)


SCHEMA_START, SCHEMA_END = "<!-- schema:start -->", "<!-- schema:end -->"


def readme_with_schema(text: str) -> str:
    """`text` with the part between the schema markers replaced by `describe_schema()`."""
    head, rest = text.split(SCHEMA_START, 1)
    _, tail = rest.split(SCHEMA_END, 1)
    return f"{head}{SCHEMA_START}\n{describe_schema()}\n{SCHEMA_END}{tail}"


def update_readme_schema(path) -> None:
    from .files import write_text_atomic

    text = Path(path).read_text(encoding="utf-8")
    if SCHEMA_START not in text:
        raise UserError(f"{path} has no {SCHEMA_START} marker")
    write_text_atomic(path, readme_with_schema(text))
