from __future__ import annotations

from dataclasses import dataclass

from ._field import opt


@dataclass
class StudySection:
    output: str | None = opt(None, "folder of the whole study's outputs (the workflow): split, LoRAs, synthetic images, realism, report",
                             path=True, required=("workflow",))
