"""The `data` section: the data folder, and how its lab files are read (normalisation, channels, planes).

The reading keys (`normalize`, `percentiles`, `channels`, `z`, `t`) change the result: every command
that decodes real images (lora, generate's init images, classify, `prompts show`) applies them the
same way (`prompts/normalize.py`) and records them in its fingerprint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

ALL = ("lora train", "generate", "classify split", "classify cv", "classify realism", "classify calibrate-weights",
       "classify blind-test", "study search", "generate --dry-run", "segment cv", "segment realism", "phenotype cv")


# keys only segmentation reads (how pairs are found and masks read); classification studies ignore them
PAIR_KEYS = ("masks", "images_dir", "masks_dir", "mask_name", "pairs")


@dataclass
class DataSection:
    data: str | None = opt(None, "dataset folder: DATA/<class>/ or DATA/<cell_line>/<class>/, optional labels.csv; segmentation: image-mask pairs; phenotyping: mono/<type>/ and co/", path=True, required=ALL + ("workflow",))
    templates: str | None = opt(None, "prompt templates YAML (default: prompts/default_templates.yaml)", path=True)
    split: str | None = opt(None, "split file written by `classify split` (fold-aware training, generation and CV)", path=True)
    skip_bad_images: bool = opt(False, "skip images that cannot be decoded, with a warning, instead of stopping")
    normalize: Literal["percentile", "percentile-dataset", "minmax", "none"] = opt(
        "percentile", "intensity rule for data of more than 8 bits (8-bit data is taken as is): percentiles per image, "
        "over the fold's training images, min-max per image, or none (the dtype's full range)")
    percentiles: list[float] = opt([1.0, 99.8], "low and high percentile of the percentile rules (clipped outside)", ge=0, le=100)
    channels: list[str | int] = opt([], "channels by OME name or 0-based index: one is grayscale, two or three map to red, green, "
                                    "blue (default: as stored)")
    z: str | int = opt("max", "z-stacks: max (maximum projection), middle, or a 0-based plane index")
    masks: Literal["auto", "instance", "binary"] = opt(
        "auto", "segmentation masks: instance (values are cell ids), binary (non-zero is foreground: cells are its connected "
        "components, touching ones split by a distance-transform watershed), or auto (decided per file: one non-zero value "
        "is binary)")
    images_dir: str = opt("images", "segmentation pairs: the folder name of the images (DATA/<images_dir>/ or DATA/<class>/<images_dir>/)")
    masks_dir: str = opt("masks", "segmentation pairs: the folder name of the masks beside the images folder")
    mask_name: str | None = opt(None, "segmentation pairs: the mask's file stem made from the image's, a template "
                                "('man_seg{stem[1:]}', '{stem[4:]}') or a regex pair 're:PATTERN=>REPLACEMENT' (default: the same "
                                "name, or name_mask(s), name_cp_masks)")
    pairs: str | None = opt(None, "segmentation pairs: a CSV file with columns image, mask and optionally class and group (paths relative to the "
                            "data folder) instead of folders", path=True)
    t: str | int = opt(0, "time series: a 0-based time index, or each (one image per time point)")
