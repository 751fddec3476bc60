"""Labels to text prompts: one prompt, trigger word and negative prompt per (class, cell line)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


from .errors import UserError
from .files import read_yaml_mapping

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
_FIELDS = {"class", "class_text", "cell_line", "cell_line_text", "of_cell_line", "trigger"}


@dataclass(frozen=True)
class GroupPrompt:
    """The text for one LoRA group."""

    group: str  # class, or <cell_line>__<class>
    label: str
    cell_line: str | None
    trigger: str
    prompt: str
    negative_prompt: str


def group_name(label: str, cell_line: str | None) -> str:
    """The LoRA folder name: the class, or `<cell_line>__<class>` (DESIGN.md)."""
    return f"{cell_line}__{label}" if cell_line else label


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "", text).lower()


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

    def for_group(self, label: str, cell_line: str | None = None) -> GroupPrompt:
        values = {
            "class": _slug(label),
            "class_text": str(self.classes.get(label, label.replace("_", " "))),
            "cell_line": _slug(cell_line) if cell_line else "",
            "cell_line_text": str(self.cell_lines.get(cell_line, cell_line)) if cell_line else "",
        }
        values["of_cell_line"] = self.cell_line_phrase.format(**values) if cell_line else ""
        values["trigger"] = (self.trigger_with_cell_line if cell_line else self.trigger).format(**values)
        text = self.prompt.format(**values)
        return GroupPrompt(group_name(label, cell_line), label, cell_line, values["trigger"], text, self.negative_prompt)


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
            if name not in _FIELDS:
                raise UserError(f"templates file {path}: '{key}' uses unknown field {{{name}}} (fields: {', '.join(sorted(_FIELDS))})")
    return Templates(**merged, source=str(path))
