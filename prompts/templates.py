"""Labels to text prompts: one prompt, trigger word and negative prompt per (class, cell line).

One set of fields means the same thing wherever a prompt is written, in a templates
file and in `generate --prompt` / `--prompts-file` / `--negative-prompt` (`Templates.fields`):

    {class}           the class as a trigger-safe word: letters and digits, lower case (`good`, `red_cell` -> `redcell`)
    {class_text}      the class's description from the templates, or the class with `_` replaced by spaces
    {cell_line}       the cell line as a trigger-safe word ("" without cell lines)
    {cell_line_text}  the cell line's description, or its name
    {of_cell_line}    `cell_line_phrase` when a cell line is known, else ""
    {trigger}         the group's trigger word
    {group}           the LoRA group name, exactly as its folder: the class or `<cell_line>__<class>`
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import read_yaml_mapping
from .layout import group_name  # noqa: F401  (re-exported: callers name groups through the templates)

DEFAULT_TEMPLATES = Path(__file__).with_name("default_templates.yaml")
_KEYS = {
    "trigger": str,
    "trigger_with_cell_line": str,
    "prompt": str,
    "cell_line_phrase": str,
    "negative_prompt": str,
    "classes": dict,
    "cell_lines": dict,
}
FIELDS = ("class", "class_text", "cell_line", "cell_line_text", "of_cell_line", "trigger", "group")


@dataclass(frozen=True)
class GroupPrompt:
    """The text for one LoRA group."""

    group: str  # class, or <cell_line>__<class>
    label: str
    cell_line: str | None
    trigger: str
    prompt: str
    negative_prompt: str


def _slug(text: str) -> str:
    """Letters and digits only, lower case: a word the tokenizer keeps together (unicode letters kept)."""
    return re.sub(r"[\W_]+", "", text).lower()


@dataclass
class Templates:
    trigger: str
    trigger_with_cell_line: str
    prompt: str
    cell_line_phrase: str
    negative_prompt: str
    classes: dict
    cell_lines: dict
    source: str = "default"
    user_classes: tuple = ()  # class keys the user's file itself names (checked against the data)

    def fields(self, label: str, cell_line: str | None = None) -> dict[str, str]:
        """The value of every field (module docstring) for one group."""
        values = {
            "class": _slug(label),
            "class_text": str(self.classes.get(label, label.replace("_", " "))),
            "cell_line": _slug(cell_line) if cell_line else "",
            "cell_line_text": str(self.cell_lines.get(cell_line, cell_line)) if cell_line else "",
            "group": group_name(label, cell_line),
        }
        try:  # each is filled from the fields above it: a field that comes later is not known yet
            values["of_cell_line"] = self.cell_line_phrase.format(**values) if cell_line else ""
            values["trigger"] = (self.trigger_with_cell_line if cell_line else self.trigger).format(**values)
        except KeyError as err:
            raise UserError(f"templates file {self.source}: {{{err.args[0]}}} cannot be used in 'trigger', "
                            "'trigger_with_cell_line' or 'cell_line_phrase' (it is made from them)") from None
        return values

    def for_group(self, label: str, cell_line: str | None = None) -> GroupPrompt:
        values = self.fields(label, cell_line)
        text = self.prompt.format(**values)
        negative = fill_fields(self.negative_prompt, values)  # the same fields as everywhere else
        return GroupPrompt(values["group"], label, cell_line, values["trigger"], text, negative)

    def check_classes(self, classes) -> None:
        """A class key of the user's templates file that matches no class of the data is a typo: one line naming the known classes."""
        unknown = sorted(set(self.user_classes) - set(classes))
        if unknown:
            raise UserError(
                f"templates file {self.source}: classes.{unknown[0]} matches no class of the data "
                f"(classes: {', '.join(sorted(classes)) or 'none'}); rename or remove it"
            )


def fill_fields(text: str, values: dict[str, str]) -> str:
    """Replace the fields of `Templates.fields` in free text (`--prompt`); other braces are left alone."""
    return re.sub(r"{(" + "|".join(FIELDS) + r")}", lambda m: values[m.group(1)], text)


def load_templates(path: str | os.PathLike | None = None) -> Templates:
    """Read templates from YAML (safe loader); None gives the shipped default."""
    path = Path(path) if path else DEFAULT_TEMPLATES
    raw = read_yaml_mapping(path, "templates file", "pass --templates FILE or leave it out for the default")
    default = read_yaml_mapping(DEFAULT_TEMPLATES, "templates file")
    merged = {}
    for key, kind in _KEYS.items():
        value = raw.get(key, default[key] if path != DEFAULT_TEMPLATES else None)
        if not isinstance(value, kind):
            raise UserError(f"templates file {path}: key '{key}' must be a {kind.__name__}, got {type(value).__name__}")
        merged[key] = value
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise UserError(f"templates file {path}: unknown key '{unknown[0]}' (known: {', '.join(_KEYS)})")
    for key in ("trigger", "trigger_with_cell_line", "prompt", "cell_line_phrase"):
        for name in re.findall(r"{(\w*)}", merged[key]):
            if name not in FIELDS:
                raise UserError(f"templates file {path}: '{key}' uses unknown field {{{name}}} (fields: {', '.join(sorted(FIELDS))})")
    # The shipped file describes the study's organ-on-chip classes; only a user's own class keys must match the data.
    user_classes = tuple(str(k) for k in raw.get("classes", {})) if path != DEFAULT_TEMPLATES else ()
    return Templates(**merged, source=str(path), user_classes=user_classes)
