"""One schema for the study YAML file: one dataclass per section.

Each room owns its section's file (`lora.py`, `generate.py`, `classify.py`, `blind.py`,
`search.py`); `data.py` and `study.py` are shared. Fields carry `help` (documented in the
README), `path` (resolved relative to the study file), `result` (changes the result: fingerprints
and workflow re-runs follow it), numeric bounds and the commands that require them
(`prompts/schema/_field.py`).
"""
import importlib
import importlib.util

from .classify import ClassifySection
from .data import DataSection
from .generate import GenerateSection
from .lora import LoraSection
from .study import StudySection

SECTIONS = {
    "study": StudySection,
    "data": DataSection,
    "lora": LoraSection,
    "generate": GenerateSection,
    "classify": ClassifySection,
}

# Sections of the blind test and the parameter search, when present.
for _name, _cls in (("blind", "BlindSection"), ("search", "SearchSection")):
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        SECTIONS[_name] = getattr(importlib.import_module(f"{__name__}.{_name}"), _cls)

__all__ = ["SECTIONS", "DataSection", "LoraSection", "GenerateSection", "ClassifySection", "StudySection"]
