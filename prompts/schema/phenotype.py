"""The `phenotype` section: per-cell phenotyping and counting in co-cultures (`python -m phenotype cv`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._field import opt

OUT = ("phenotype cv",)


@dataclass
class PhenotypeSection:
    output: str | None = opt(None, "output folder (report.html, report.md, results.csv, results.json, overlays, feature cache)",
                             path=True, required=OUT)
    segmentation: Literal["given", "classical", "unet", "stardist"] = opt(
        "given", "where co-culture test cells come from: given (the instance masks beside the images), classical "
        "(Otsu + watershed), or unet / stardist (the segmentation task's model, trained per fold on that fold's "
        "training image-mask pairs only, settings from the segment section); predicted cells report detection F1 at IoU 0.5")
    segmented: str | None = opt(None, "folder of fold_<k>/masks/ predicted instance masks of each fold's test images "
                                "(`segment predict`; segmentation unet or stardist); the workflow sets it", path=True)
    crop_size: int = opt(48, "side in pixels of the square crop centred on each cell (at the image's resolution)", ge=8)
    mask_channel: bool = opt(True, "give the classifiers the cell's own mask beside its pixels (neighbours are masked out of the features)")
    min_size: int = opt(20, "the classical floor drops cells smaller than this many pixels (given masks are kept whole)", ge=0)
    min_distance: int = opt(3, "smallest distance in px between two seeds of the classical watershed", ge=1)
    regimes: list[str] = opt(["zero-shot", "retrained", "co-only"],
                             "training regimes: zero-shot (monoculture cells only), retrained (+ the cells of k annotated "
                             "co-culture training images, one regime per k), co-only (co-culture training cells only), "
                             "synthetic (each retrained-k regime, or zero-shot without retrained, plus generated crops of "
                             "each type from one LoRA per type trained on the fold's training crops only)")
    k: list[int] = opt([1, 2, 5], "annotated co-culture training images per fold added in the retrained regime", ge=1)
    synthetic_fractions: list[float] = opt(
        [0.5], "the synthetic regime adds, per type, this fraction of the regime's training cells of that type as "
        "generated crops (one regime per fraction, named <regime>+P with P = 100 x fraction)", gt=0)
    synthetic: str | None = opt(None, "folder of generated crops (fold_<k>/w<weight>/<type>/*.png, written by `generate` "
                                "from the fold's LoRAs); the workflow sets it", path=True)
    crops: str | None = opt(None, "folder of the fold_<k>/ crop folders of `phenotype crops` (the LoRAs' training data): "
                            "the leak check traces every crop a LoRA saw to its source image; the workflow sets it", path=True)
    baseline: str = opt("zero-shot", "the regime every other regime is compared with (verdicts, one Holm family)")
    models: list[str] = opt(["reference", "cnn"], "per-cell classifiers side by side: reference (regionprops shape, "
                            "intensity and GLCM texture + random forest, CellProfiler's recipe) and cnn (frozen EfficientNet + trained head)")
    primary: Literal["proportion_error", "count_mae", "relative_count_error", "balanced_accuracy", "f1"] = opt(
        "proportion_error", "the metric the verdicts test: proportion error (pp), count MAE, relative count error, "
        "balanced accuracy or macro F1")
    delta: float = opt(1.0, "margin of practical equivalence in the primary metric's units (pp for proportion error)", gt=0)
    folds: int = opt(5, "folds over the co-culture images (grouped by the group key when the data has one)", ge=2)
    repeats: int = opt(1, "repeated cross-validation: each repeat reshuffles the folds", ge=1)
    seed: int = opt(0, "random seed (folds, the k annotated images, forest and head initialisation)")
    trees: int = opt(200, "trees of the reference method's random forest", ge=1)
    backbone: str = opt("EfficientNetB0", "the cnn's frozen Keras application: EfficientNetB0..EfficientNetB7")
    weights: str = opt("imagenet", "cnn base weights: imagenet (Keras cache or download), a .weights.h5 file, calibrated "
                       "(random, BatchNorm calibrated on the monoculture crops: an offline smoke stand-in) or none", path=True, result=True)
    cnn_size: int = opt(64, "crops are resized to this many pixels for the cnn", ge=32, le=600)
    epochs: int = opt(30, "epochs of the cnn's head on the cached features", ge=1)
    batch_size: int = opt(64, "batch size (feature extraction and head training)", ge=1)
    learning_rate: float = opt(1e-3, "Adam learning rate of the cnn's head", gt=0)
    cache_dir: str | None = opt(None, "per-cell feature cache folder (default: OUTPUT/cache)", path=True)
    overlays: int = opt(2, "first-fold test images drawn with cells outlined in their predicted type's colour", ge=0)
    overwrite: bool = opt(False, "replace the reports of an earlier run in OUTPUT", result=False)
