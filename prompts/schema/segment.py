"""The `segment` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

OUT = ("segment cv", "segment realism")


@dataclass
class SegmentSection:
    output: str | None = opt(None, "output folder (cv: reports, results, runs; realism: realism.json)", path=True, required=OUT)
    synthetic: str | None = opt(None, "synthetic pairs written by `controlnet generate`: [fold_<k>/]<tree>/images/ + masks/", path=True,
                                required=("segment realism",))
    folds: int = opt(5, "number of folds (when no data.split is given)", ge=2)
    repeats: int = opt(1, "repeated cross-validation: each repeat reshuffles the folds", ge=1)
    group_by: str | None = opt(None, "keep groups in one fold: cell_line, group, a labels.csv column, or regex:PATTERN")
    seed: int = opt(0, "random seed (folds, initial weights, mixes, augmentation)")
    mixes: list[str] = opt(["real", "real+50", "real+100", "synthetic"], "training mixes: real, real+P, synthetic")
    model: Literal["unet", "stardist", "otsu-watershed"] = opt(
        "unet", "segmentation model: unet (Keras U-Net), stardist (StarDist 2D, trained from scratch or from segment.pretrained), "
        "or otsu-watershed (the classical floor, no training; it is also scored beside every learned model)")
    pretrained: str | None = opt(None, "stardist: a StarDist 2D model folder (config.json + weights) to fine-tune instead of "
                                 "training from scratch", path=True)
    backbone: str = opt("MobileNetV2", "U-Net encoder from keras.applications: MobileNetV2 or EfficientNetB0")
    weights: str = opt("imagenet", "encoder weights: imagenet (Keras cache or download), a .weights.h5 file, none (random), "
                       "or tiny (random, narrow: smoke runs)", path=True, result=True)
    image_size: int = opt(256, "U-Net training size in pixels (square, a multiple of 32): pairs are resized to it for training; metrics are "
                     "computed at each test image's own size", ge=32)
    epochs: int = opt(50, "training epochs per run", ge=1)
    batch_size: int = opt(8, "batch size", ge=1)
    learning_rate: float = opt(1e-3, "Adam learning rate", gt=0)
    augment: bool = opt(True, "random flips and 90-degree rotations of image and mask together")
    min_size: int = opt(4, "interior seeds smaller than this many pixels are dropped before the watershed", ge=1)
    delta: float = opt(0.02, "margin of practical equivalence on AP50: a mix whose TOST interval against `real` lies within "
                       "±delta is reported as equivalent (report only: runs are reused)", gt=0, lt=1)
    overlays: int = opt(3, "test images per mix drawn with predicted and true outlines in the report (first fold)", ge=0)
    realism: str | None = opt(None, "realism.json written by `segment realism` (or its folder), added to the CV report", path=True)
    overwrite: bool = opt(False, "recompute a CV run in OUT whose inputs changed; replace a realism report", result=False)
