"""`phenotype pairs`: one fold's image-mask pairs for the segmenter, and its test images (`prompts.segmented`).

With `phenotype.segmentation: unet | stardist` the cells of a fold's test co-culture images come from the
segmentation task's model trained on that fold's training pairs only: every monoculture image with an
instance mask and every co-culture training image of the fold with one. This module writes those two lists;
`python -m segment predict` trains on the first and predicts the second. No test image (by path or by the
sha256 of its bytes) is ever a training pair: the lists refuse it before anything is written, and the
segmenter's record lets `phenotype cv` check it again.
"""
from __future__ import annotations

from pathlib import Path

from prompts import fingerprint
from prompts.errors import UserError
from prompts.guard import check_output_dir, check_outputs
from prompts.layout import fold_name
from prompts.segmented import TEST_COLUMNS, TEST_CSV, TRAIN_COLUMNS, TRAIN_CSV, find_test_image_in_training, write_rows
from prompts.splits import Fold

from .data import PhenotypeData, read_data

COMMAND = "phenotype pairs"


def fold_lists(data: PhenotypeData, fold: Fold) -> tuple[list[tuple[Path, Path]], list[tuple[str, Path]]]:
    """(training pairs [(image, mask)], test images [(name, image)]) of one fold.

    Training pairs: monoculture images with a mask, then the fold's co-culture training images with a mask.
    Raises UserError when the fold has no training pair, or a training file has a test image's bytes.
    """
    co = {im.name: im for im in data.co}
    train = [(im.image, im.mask) for im in data.mono if im.mask is not None]
    train += [(co[n].image, co[n].mask) for n in fold.train if co[n].mask is not None]
    test = [(n, co[n].image) for n in fold.test]
    if not train:
        raise UserError(f"{data.root}: {fold_name(fold.index)} has no image with an instance mask to train the segmenter on; "
                        "add masks beside the monoculture or co-culture images, or use phenotype.segmentation classical")
    check_no_test_bytes(train, test, fold)
    return train, test


def check_no_test_bytes(train: list[tuple[Path, Path]], test: list[tuple[str, Path]], fold: Fold) -> None:
    """No training image or mask is a test image of the fold, by path or by sha256; else one UserError line."""
    hit = find_test_image_in_training(train, test)
    if hit:
        raise UserError(f"{hit[0]} has the bytes of {hit[1]}, a test image of {fold_name(fold.index)}: the segmenter would "
                        "train on a test image; remove the duplicate from the data folder")


def write_fold_pairs(data_section, ph, fold_index: int, out) -> dict:
    """The Python API of `phenotype pairs`: write OUT/train.csv and OUT/test.csv of fold `fold_index`.

    Parameters
    ----------
    data_section : prompts.schema.data.DataSection
        The study's data section (data.data, data.split).
    ph : prompts.schema.phenotype.PhenotypeSection
        The phenotype section (folds, repeats, seed: the folds `phenotype cv` makes).
    fold_index : int
        The fold (0-based, as `phenotype cv` numbers them).
    out : path
        The folder of the two lists (never inside the data folder); created.

    Returns
    -------
    dict
        {"fold": k, "train": n training pairs, "test": n test images}.
    """
    from .cv import fold_list

    data = read_data(data_section.data)
    folds = fold_list(data_section, ph, data)
    if not 0 <= fold_index < len(folds):
        raise UserError(f"--fold {fold_index}: the study has folds 0..{len(folds) - 1}")
    out = check_output_dir(out, data=data.root, flag="--out")
    train, test = fold_lists(data, folds[fold_index])
    check_outputs(out, [TRAIN_CSV, TEST_CSV], flag="--out")
    fingerprint.claim(out, [TRAIN_CSV, TEST_CSV], COMMAND)  # after every check, before any write
    write_rows(out / TRAIN_CSV, TRAIN_COLUMNS, [(Path(i).resolve(), Path(m).resolve()) for i, m in train])
    write_rows(out / TEST_CSV, TEST_COLUMNS, [(n, Path(p).resolve()) for n, p in test])
    return {"fold": fold_index, "train": len(train), "test": len(test)}
