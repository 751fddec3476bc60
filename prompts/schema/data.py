from __future__ import annotations

from dataclasses import dataclass

from ._field import opt

ALL = ("lora train", "generate", "classify split", "classify cv", "classify realism", "classify calibrate-weights",
       "classify blind-test", "study search", "generate --dry-run")


@dataclass
class DataSection:
    data: str | None = opt(None, "dataset folder: DATA/<class>/ or DATA/<cell_line>/<class>/, optional labels.csv", path=True, required=ALL + ("workflow",))
    templates: str | None = opt(None, "prompt templates YAML (default: prompts/default_templates.yaml)", path=True)
    split: str | None = opt(None, "split file written by `classify split` (fold-aware training, generation and CV)", path=True)
    skip_bad_images: bool = opt(False, "skip images that cannot be decoded, with a warning, instead of stopping")
