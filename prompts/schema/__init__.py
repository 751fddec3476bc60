"""One schema for the study YAML file: one dataclass per section.

Each room owns its section's file (`lora.py`, `generate.py`, `classify.py`, `blind.py`,
`search.py`, `segment.py`, `controlnet.py`, `phenotype.py`); `data.py` and `study.py` are shared. Fields carry `help` (documented in the
README), `path` (resolved relative to the study file), `result` (changes the result: fingerprints
and workflow re-runs follow it), numeric bounds and the commands that require them
(`prompts/schema/_field.py`).
"""
from .blind import BlindSection
from .classify import ClassifySection
from .controlnet import ControlnetSection
from .data import DataSection
from .generate import GenerateSection
from .lora import LoraSection
from .phenotype import PhenotypeSection
from .search import SearchSection
from .segment import SegmentSection
from .study import StudySection

SECTIONS = {
    "study": StudySection,
    "data": DataSection,
    "lora": LoraSection,
    "generate": GenerateSection,
    "classify": ClassifySection,
    "blind": BlindSection,
    "search": SearchSection,
    "segment": SegmentSection,
    "controlnet": ControlnetSection,
    "phenotype": PhenotypeSection,
}


__all__ = ["SECTIONS", "DataSection", "LoraSection", "GenerateSection", "ClassifySection", "StudySection", "BlindSection",
           "SearchSection", "SegmentSection", "ControlnetSection", "PhenotypeSection"]
