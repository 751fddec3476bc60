"""One schema for the study YAML file: one dataclass per section.

Each room owns its section's file (`lora.py`, `generate.py`, `classify.py`);
`data.py` is shared. Fields carry `help` (documented in the README) and `path`
(resolved relative to the config file).
"""
from .classify import ClassifySection
from .data import DataSection
from .generate import GenerateSection
from .lora import LoraSection

SECTIONS = {
    "data": DataSection,
    "lora": LoraSection,
    "generate": GenerateSection,
    "classify": ClassifySection,
}

__all__ = ["SECTIONS", "DataSection", "LoraSection", "GenerateSection", "ClassifySection"]
