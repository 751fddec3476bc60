from __future__ import annotations

from dataclasses import dataclass

from ._field import opt


@dataclass
class ClassifySection:
    output: str | None = opt(None, "output folder (split file, CV report, realism report)", path=True)
    synthetic: str | None = opt(None, "synthetic folder written by `generate`: [fold_<k>/]w<weight>/[<cell_line>/]<class>/", path=True)
    folds: int = opt(5, "number of folds (split)")
    repeats: int = opt(1, "repeated cross-validation: each repeat reshuffles the folds (split)")
    group_by: str | None = opt(None, "keep groups in one fold: cell_line, group, a labels.csv column, or regex:PATTERN")
    seed: int = opt(0, "random seed (folds, head init, mixes, augmentation views)")
    mixes: list[str] = opt(
        ["real", "real+10", "real+25", "real+50", "real+75", "real+100", "synthetic"],
        "training mixes: real, real+P, synthetic, balance, oversample, classweight, noaug",
    )
    backbone: str = opt("EfficientNetB7", "Keras application EfficientNetB0..EfficientNetB7")
    weights: str = opt("imagenet", "imagenet (Keras cache or download), a weights file, or none (random, seeded)")
    image_size: int = opt(600, "classifier input size in pixels (square)")
    epochs: int = opt(30, "head training epochs")
    batch_size: int = opt(16, "batch size (training and feature extraction)")
    learning_rate: float = opt(1e-3, "Adam learning rate of the head")
    augment: bool = opt(True, "augmentation layers (rotation, translation, flip, contrast)")
    views: int | None = opt(None, "augmented views per image in the feature cache (default: epochs)")
    feature_cache: bool = opt(True, "compute frozen-base features once per image and view, cached on disk")
    cache_dir: str | None = opt(None, "feature cache folder (default: $XDG_CACHE_HOME/cellsynth/features)", path=True)
    class_weights: bool = opt(False, "class-weighted loss in every mix (baseline)")
    minority_fraction: float | None = opt(None, "subsample the minority class of each training fold to this fraction of the largest class")
    minority_class: str | None = opt(None, "the class --minority-fraction subsamples (default: the smallest)")
    fine_tune_layers: int = opt(0, "second phase: unfreeze this many top layers of the base, BN frozen (0: off)")
    fine_tune_epochs: int = opt(10, "second-phase epochs")
    fine_tune_lr: float = opt(1e-5, "second-phase learning rate")
    realism: str | None = opt(None, "realism.json written by `classify realism`, added to the CV report", path=True)
