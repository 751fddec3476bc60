"""The Python API of `phenotype crops` (see `phenotype.crops`): one fold's training crops from the study's data."""
from __future__ import annotations

from prompts.errors import UserError
from prompts.guard import check_output_dir
from prompts.normalize import from_section

from .crops import fold_training_cells, write_crops
from .cv import collect_cells, fold_list
from .data import POINTS, read_data


def crops_of_fold(data_section, ph, fold_index: int, out) -> dict:
    """The Python API of `phenotype crops`: read the data, cut every cell, write fold `fold_index`'s training crops.

    Parameters
    ----------
    data_section : prompts.schema.data.DataSection
        The study's data section (data.data, data.split, the reading rule).
    ph : prompts.schema.phenotype.PhenotypeSection
        The phenotype section (crop size, folds, repeats, seed, segmentation).
    fold_index : int
        The fold (0-based, repeat-major as `phenotype cv` numbers them).
    out : path
        The crop folder.

    Returns
    -------
    dict
        The record written (`write_crops`).
    """
    data = read_data(data_section.data)
    if not data.mono and data.truth == POINTS:
        raise UserError(f"{data.root}: no monocultures and co-culture points only: no typed training cell to crop")
    folds = fold_list(data_section, ph, data)
    if not 0 <= fold_index < len(folds):
        raise UserError(f"--fold {fold_index}: the study has folds 0..{len(folds) - 1}")
    fold = folds[fold_index]
    check_output_dir(out, data=data.root, flag="--out")
    reading = from_section(data_section)
    cells = collect_cells(data, ph, reading)
    sources = {im.name: im.image for im in data.mono + data.co}
    return write_crops(out, fold_training_cells(cells, fold), sources, fold, ph.crop_size, data.root, reading)
