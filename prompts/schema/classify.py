from __future__ import annotations

from dataclasses import dataclass

from ._field import opt


@dataclass
class ClassifySection:
    output: str | None = opt(None, "report folder", path=True)
    synthetic: str | None = opt(None, "synthetic folder written by `generate`", path=True)
    folds: int = opt(5, "number of folds (split)")
    repeats: int = opt(1, "repeated cross-validation (split)")
    group_by: str | None = opt(None, "keep groups in one fold: cell_line, a labels.csv column, or regex:PATTERN")
    seed: int = opt(0, "random seed (folds, head init, mixes)")
    mixes: list[str] = opt(
        ["real", "real+10", "real+25", "real+50", "real+75", "real+100", "synthetic"],
        "training mixes: real, real+P, synthetic, balance, oversample",
    )
    backbone: str = opt("EfficientNetB7", "Keras application (EfficientNetB0..B7)")
    weights: str = opt("imagenet", "imagenet, a weights file, or none", path=False)
    image_size: int = opt(600, "classifier input size")
    epochs: int = opt(30, "head training epochs")
    batch_size: int = opt(16, "head training batch size")
    learning_rate: float = opt(1e-3, "Adam learning rate")
    augment: bool = opt(True, "augmentation layers (flip, rotation, translation, contrast)")
    feature_cache: bool = opt(True, "compute frozen-base features once per image and view, cached on disk")
    class_weights: bool = opt(False, "class-weighted loss (baseline)")
    minority_fraction: float | None = opt(None, "subsample the smallest class to this fraction of the largest")
    fine_tune_layers: int = opt(0, "second phase: unfreeze this many top layers (0: off)")
    fine_tune_epochs: int = opt(10, "second-phase epochs")
    fine_tune_lr: float = opt(1e-5, "second-phase learning rate")
