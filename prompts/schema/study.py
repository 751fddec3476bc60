"""The `study` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt


@dataclass
class StudySection:
    output: str | None = opt(None, "folder of the whole study's outputs (the workflow): split, LoRAs, synthetic images, realism, report",
                             path=True, required=("workflow",))
    task: Literal["classification", "segmentation", "phenotyping"] = opt(
        "classification", "what the workflow studies: classification (LoRAs, images, `classify cv`), segmentation "
        "(image-mask pairs: ControlNets, synthetic pairs, `segment cv`) or phenotyping (per-cell types and counts in "
        "co-cultures: each regime, then `phenotype cv`)", result=False)
