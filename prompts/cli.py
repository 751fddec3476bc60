"""Every command's flags, made from the study schema: one flag per key, one style everywhere.

`--some-key` sets `some_key` of its section; booleans are `--key` / `--no-key`; lists take several
values separated by spaces or commas; choices come from the schema's `Literal` types; the help shows
the schema's text and the default once. A flag given overrides the `--config` study file, which
overrides the defaults (flags default to None = "not given").
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing

from .config import Study, apply_overrides, check_required, field_default, load_study
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2, like every other bad input."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _base_type(tp):
    """The type a flag parses: Optional[X] -> X; int | str -> str."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else str
    return tp


def _metavar(tp, f) -> str:
    return "PATH" if f.metadata.get("path") else {int: "N", float: "X"}.get(tp, "NAME")


def add_section_flags(parser, cls, keys=None, exclude=()) -> None:
    """One flag per field of the schema section `cls` (only `keys` when given), into a group titled by the section."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{_section_name(cls)} settings (study file section `{_section_name(cls)}`)")
    for f in dataclasses.fields(cls):
        if (keys is not None and f.name not in keys) or f.name in exclude:
            continue
        tp = _base_type(hints[f.name])
        default = field_default(f)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:  # the schema's text names a computed default itself
            help_text += f" (default: {shown if shown not in ('', None) else 'none'})"
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            group.add_argument(flag, dest=f.name, nargs="+", default=None, metavar=_metavar(item, f), type=str, help=help_text)
        elif typing.get_origin(tp) is typing.Literal:
            group.add_argument(flag, dest=f.name, choices=typing.get_args(tp), default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=str, default=None, metavar=_metavar(tp, f), help=help_text)


def _section_name(cls) -> str:
    from .schema import SECTIONS

    return next((name for name, c in SECTIONS.items() if c is cls), cls.__name__)


def _convert(text: str, tp, flag: str):
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{flag}: {text!r} is not an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{flag}: {text!r} is not a number") from None
    return text


def _typed_values(args, cls) -> None:
    """Turn the flags' strings into the schema's types (lists: also split on commas), in place on `args`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        if typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parts = [p.strip() for v in value for p in v.split(",") if p.strip()]
            setattr(args, f.name, [_convert(p, item, flag) for p in parts])
        elif tp in (int, float):
            setattr(args, f.name, _convert(value, tp, flag))


def add_config_flag(parser) -> None:
    parser.add_argument("--config", metavar="STUDY.yaml", help="the study file (sections study, data, lora, generate, classify, ...); "
                        "flags override it")


def read_settings(args, command: str, sections: tuple[str, ...]) -> Study:
    """The study file of `args.config` with the flags of `sections` applied, checked for `command`'s required keys.

    Its reading rule is checked against `command` here; the command passes `from_section(study.data)` to every
    decoder call and fingerprint itself (nothing is installed process-wide)."""
    from .schema import SECTIONS

    study = load_study(getattr(args, "config", None))
    for name in sections:
        _typed_values(args, SECTIONS[name])
        apply_overrides(getattr(study, name), args)
    if study.generate.model is None and study.lora.model is not None:
        study.generate.model = study.lora.model  # one base model for the study unless generate names another
    check_required(study, command)
    from .normalize import check_supported, from_section

    check_supported(from_section(study.data), command, study.generate.init_images)
    return study


# --------------------------------------------------------------------------- processes (accelerate launch, torchrun)

def accelerate_cpu_forced() -> bool:
    """`accelerate launch --cpu` (it sets ACCELERATE_USE_CPU) asked for CPU processes."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def cpu_processes() -> bool:
    """Whether this run's processes must run on CPUs with gloo: asked for (`--cpu`), or several processes and no GPU.

    accelerate picks the CPU backend only when told `cpu=True`; lora and generate both ask this one function.
    """
    if accelerate_cpu_forced():
        return True
    if world_size() <= 1:
        return False
    import torch

    return not torch.cuda.is_available()
