from __future__ import annotations

from dataclasses import dataclass

from ._field import opt


@dataclass
class DataSection:
    data: str | None = opt(None, "dataset folder: DATA/<class>/ or DATA/<cell_line>/<class>/, optional labels.csv", path=True)
    templates: str | None = opt(None, "prompt templates YAML (default: prompts/default_templates.yaml)", path=True)
    split: str | None = opt(None, "split file written by `classify split` (fold-aware training, generation and CV)", path=True)
    skip_bad_images: bool = opt(False, "skip images that cannot be decoded, with a warning, instead of stopping")
