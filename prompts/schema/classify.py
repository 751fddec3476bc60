"""The `classify` section of the study file: one field per key (type, default, range, help, whether it changes the result)."""
from __future__ import annotations

from dataclasses import dataclass

from ._field import opt

OUT = ("classify split", "classify cv", "classify realism", "classify calibrate-weights")


@dataclass
class ClassifySection:
    output: str | None = opt(None, "output file (split) or folder (cv, realism, calibrate-weights: a .weights.h5 file)", path=True, required=OUT)
    synthetic: str | None = opt(None, "synthetic folder written by `generate`: [fold_<k>/]w<weight>/[<cell_line>/]<class>/", path=True,
                                required=("classify realism",))
    folds: int = opt(5, "number of folds (split)", ge=2)
    repeats: int = opt(1, "repeated cross-validation: each repeat reshuffles the folds (split)", ge=1)
    group_by: str | None = opt(None, "keep groups in one fold: cell_line, group, a labels.csv column, or regex:PATTERN")
    seed: int = opt(0, "random seed (folds, head init, mixes, augmentation views)")
    mixes: list[str] = opt(
        ["real", "real+10", "real+25", "real+50", "real+75", "real+100", "synthetic"],
        "training mixes: real, real+P, synthetic, balance, oversample, classweight, noaug",
    )
    backbone: str = opt("EfficientNetB7", "Keras application EfficientNetB0..EfficientNetB7")
    weights: str = opt("imagenet", "imagenet (Keras cache or download), a weights file, calibrated (offline smoke stand-in), "
                       "or none (random: results mean nothing)", path=True, result=True)
    image_size: int = opt(600, "classifier input size in pixels (square); at most 1024 (activations grow with its square)", ge=32, le=1024)
    epochs: int = opt(30, "head training epochs", ge=1)
    batch_size: int = opt(16, "batch size (training and feature extraction)", ge=1)
    learning_rate: float = opt(1e-3, "Adam learning rate of the head", gt=0)
    augment: bool = opt(True, "augmentation layers (rotation, translation, flip, contrast)")
    views: int | None = opt(None, "augmented views per image in the feature cache (default: epochs)", ge=1)
    feature_cache: bool = opt(True, "compute frozen-base features once per image and view, cached on disk", result=False)
    cache_dir: str | None = opt(None, "feature cache folder (default: $XDG_CACHE_HOME/cellsynth/features)", path=True)
    class_weights: bool = opt(False, "class-weighted loss in every mix (baseline)")
    minority_fraction: float | None = opt(None, "subsample the minority class of each training fold to this fraction of the largest class", gt=0, le=1)
    minority_class: str | None = opt(None, "the class minority_fraction subsamples (default: the smallest)")
    fine_tune_layers: int = opt(0, "second phase: unfreeze this many top layers of the base, BN frozen (0: off)", ge=0)
    fine_tune_epochs: int = opt(10, "second-phase epochs", ge=0)
    fine_tune_lr: float = opt(1e-5, "second-phase learning rate", gt=0)
    delta: float = opt(0.02, "margin of practical equivalence on macro F1: a mix whose TOST interval against `real` "
                       "lies within ±delta is reported as equivalent (report only: runs are reused)", gt=0, lt=1,
                       result=True)
    realism: str | None = opt(None, "realism.json written by `classify realism` (or its folder), added to the CV report", path=True)
    blind: str | None = opt(None, "folder of `classify blind-score`, added to the CV report", path=True)
    overwrite: bool = opt(False, "replace an existing split file or realism report; recompute a CV run in OUT whose inputs changed (cv)", result=False)
