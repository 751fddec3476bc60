"""The study YAML file: sections `data`, `lora`, `generate`, `classify`.

Each section is a dataclass in `prompts.schema` (one schema for the whole
study). Every command reads the whole file, so a typo in any section is caught
by whichever command runs first. Command-line flags override the file: a flag
whose value is None (not given) leaves the file's value.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError
from .files import read_yaml_mapping
from .schema import SECTIONS
from .schema._field import field_default  # noqa: F401  (read from here by the commands)


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
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
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


def check_range(value, f, where: str):
    """`value` (or each item of a list) within the field's bounds (`ge`, `gt`, `le`, `lt`), else a UserError."""
    items = value if isinstance(value, list) else [value]
    m = f.metadata
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for key, ok, word in (("ge", lambda a, b: a >= b, "at least"), ("gt", lambda a, b: a > b, "greater than"),
                              ("le", lambda a, b: a <= b, "at most"), ("lt", lambda a, b: a < b, "less than")):
            bound = m.get(key)
            if bound is not None and not ok(v, bound):
                raise UserError(f"{where}: {v!r} must be {word} {bound}")
        step = m.get("multiple_of")
        if step and v % step:
            raise UserError(f"{where}: {v!r} must be a multiple of {step} (the VAE downsamples by {step})")
    return value


def check_field(section_cls, name: str, value, where: str):
    """Type-check, coerce and range-check one value of a section's field."""
    f = {f.name: f for f in dataclasses.fields(section_cls)}[name]
    return check_range(check_type(value, _hints(section_cls)[name], where), f, where)


def build_section(cls, values: dict, where: str, errors: list[str] | None = None):
    """A section dataclass from a mapping; unknown keys, wrong types and values out of range name the key.

    errors: when given, every error is appended to it (one line each) and the bad keys keep their
    defaults; otherwise the first error is raised.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        err = UserError(f"{where}: must be a mapping of keys, got {type(values).__name__}")
        if errors is None:
            raise err
        errors.append(str(err))
        return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        try:
            if key not in known:
                raise UserError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
            kwargs[key] = check_field(cls, key, value, f"{where}.{key}")
        except UserError as err:
            if errors is None:
                raise
            errors.append(str(err))
    return cls(**kwargs)


@dataclasses.dataclass
class Study:
    """The whole study file, one dataclass per section."""

    study: typing.Any
    data: typing.Any
    lora: typing.Any
    generate: typing.Any
    classify: typing.Any
    blind: typing.Any = None
    search: typing.Any = None
    segment: typing.Any = None
    controlnet: typing.Any = None
    phenotype: typing.Any = None
    path: Path | None = None


def load_study(path: str | os.PathLike | None) -> Study:
    """Read and validate a study YAML file (safe loader); None gives all defaults. Raises the first error."""
    return _load(path, None)


def validate_study_file(path: str | os.PathLike) -> list[str]:
    """Every error of a study file, one line each ([] when it is valid)."""
    errors: list[str] = []
    try:
        study = _load(path, errors)
        from .normalize import from_section

        from_section(study.data)  # the reading rule's keys together (z, t, percentiles)
    except UserError as err:
        errors.append(str(err))
    return errors


def _load(path, errors: list[str] | None) -> Study:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path, "study file")
    return build_study(raw, path, errors)


def build_study(raw: dict, path: str | os.PathLike | None, errors: list[str] | None = None) -> Study:
    """A Study from a mapping: a study file's content, or Snakemake's merged `config`.

    Relative paths are relative to `path`'s folder (the study file). errors: as `build_section`.
    """
    path = Path(path) if path is not None else None
    for name in raw:
        if name not in SECTIONS:
            err = UserError(f"study file {path}: unknown section '{name}' (sections: {', '.join(SECTIONS)})")
            if errors is None:
                raise err
            errors.append(str(err))
    where = str(path) + ": " if path else ""
    sections = {name: build_section(cls, raw.get(name), f"{where}{name}", errors) for name, cls in SECTIONS.items()}
    return _resolve_paths(Study(**sections, path=path))


# Values of path keys that name something built in, not a file: `model: tiny`, `weights: imagenet`.
KEYWORDS = frozenset({"tiny", "imagenet", "none", "calibrated"})


def _resolve_paths(study: Study) -> Study:
    """Relative paths in a config file are relative to that file's folder."""
    if study.path is None:
        return study
    base = study.path.parent
    for name in SECTIONS:
        section = getattr(study, name)
        if section is None:
            continue
        for f in dataclasses.fields(section):
            if f.metadata.get("path"):
                value = getattr(section, f.name)
                if isinstance(value, list):
                    setattr(section, f.name, [_resolve(v, base, f) for v in value])
                else:
                    setattr(section, f.name, _resolve(value, base, f))
    return study


def _resolve(value, base: Path, f):
    if (isinstance(value, str) and value and value not in KEYWORDS and not os.path.isabs(value) and "://" not in value
            and not _looks_like_hub_id(value, f)):
        return str(base / value)
    return value


def _looks_like_hub_id(value: str, f) -> bool:
    return bool(f.metadata.get("hub")) and not os.path.exists(value) and value.count("/") == 1 and not value.startswith(".")


def apply_overrides(section, args, where: str = "flag"):
    """Copy non-None attributes of an argparse namespace onto a section, type-checked."""
    for f in dataclasses.fields(section):
        value = getattr(args, f.name, None)
        if value is not None:
            flag = "--" + f.name.replace("_", "-")
            setattr(section, f.name, check_field(type(section), f.name, value, flag))
    return section


def check_required(study: Study, command: str) -> None:
    """A one-line UserError for the first field that `command` needs and that has no value."""
    for name, cls in SECTIONS.items():
        section = getattr(study, name)
        for f in dataclasses.fields(cls):
            if command in f.metadata.get("required", ()) and getattr(section, f.name) in (None, "", []):
                flag = "--" + f.name.replace("_", "-")
                raise UserError(f"{flag} is missing: give it on the command line or as {name}.{f.name} in the study file (--config)")


def missing_required(study: Study, command: str) -> list[str]:
    """`section.key` of every field that `command` needs (the schema's `required`) and that has no value."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if command in f.metadata.get("required", ()) and getattr(getattr(study, name), f.name) in (None, "", [])]


def field_help(dotted: str) -> str:
    """The schema's help line of `section.key`."""
    name, key = dotted.split(".", 1)
    return {f.name: f for f in dataclasses.fields(SECTIONS[name])}[key].metadata.get("help", "")


def as_dict(section) -> dict:
    return dataclasses.asdict(section)


def dump_yaml(study_or_sections: dict) -> str:
    return yaml.safe_dump(study_or_sections, sort_keys=False, default_flow_style=None)


def describe_range(f) -> str:
    m = f.metadata
    parts = [f"{sym} {m[k]}" for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if m.get(k) is not None]
    if m.get("multiple_of"):
        parts.append(f"multiple of {m['multiple_of']}")
    return ", ".join(parts)


def _markdown_text(text: str) -> str:
    """`text` safe in a Markdown table cell: ``<`` and ``>`` outside code spans escaped (so `DATA/<class>/`
    is not read as an HTML tag), pipes escaped."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def describe_schema() -> str:
    """Markdown of every section, key, type, default, range and role (docs/reference/study-file.md)."""
    lines = ["`result`: yes when the value changes the result (fingerprints and the workflow's re-runs follow it).", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"### `{name}`\n")
        lines.append("| key | type | default | range | result | meaning |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            result = "yes" if f.metadata.get("result", True) else ""
            lines.append(f"| `{f.name}` | {_type_name(hints[f.name])} | `{field_default(f)!r}` | {describe_range(f)} | {result} "
                         f"| {_markdown_text(f.metadata.get('help', ''))} |")
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

    if not Path(path).is_file():
        raise UserError(f"{path} does not exist: give the Markdown page that holds the {SCHEMA_START} marker, "
                        "e.g. docs/reference/study-file.md")
    text = Path(path).read_text(encoding="utf-8")
    if SCHEMA_START not in text:
        raise UserError(f"{path} has no {SCHEMA_START} marker")
    write_text_atomic(path, readme_with_schema(text))
