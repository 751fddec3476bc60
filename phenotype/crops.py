"""`phenotype crops`: a fold's training cells as PNG crops per type, the data folder of one LoRA per type.

    OUT/<type>/<image>__c<label>.png      (the crop of one training cell, as `phenotype cv` cuts it)
    OUT/crops.json                        (the record: each crop's source image and both files' SHA-256)

A fold's training cells are the monoculture cells and the annotated cells of the fold's co-culture training
images (the folds of `phenotype cv`: the one fold rule over the co-culture images, or data.split). No cell of
a test image of the fold is written. `lora train --data OUT` then trains one LoRA per type on these crops (the
type folders are its classes) and `generate` makes synthetic crops per type; `phenotype cv` checks each
generated tree against this record: every crop its LoRAs saw must come from a training image of its fold
(by path and by content, `analysis.crossval.find_test_file`).

Names are deterministic (the source image's data-relative path with `/` as `__`, and the cell's label), files
are written atomically, and OUT is claimed as `phenotype crops`'s (`prompts.fingerprint.claim`): a file there
that this command did not write is never replaced, and a crop of an earlier run that is no longer a training
cell (another fold rule, crop size) is removed, so the LoRA's data folder holds exactly the fold's crops.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from prompts import fingerprint
from prompts.errors import UserError
from prompts.files import write_bytes_atomic
from prompts.guard import check_output_dir, check_outputs
from prompts.layout import check_name, fold_name
from prompts.splits import Fold

from .cells import Cell

COMMAND = "phenotype crops"
RECORD = "crops.json"  # the crop folder's record: {"fold", "crop_size", "crops": {crop: {source, source_sha256, sha256}}}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def crop_name(cell: Cell) -> str:
    """The crop's file name: `<image path, '/' as '__', other unsafe characters as '_'>__c<label>.png`."""
    stem = _UNSAFE.sub("_", cell.image.replace("/", "__"))
    return f"{stem}__c{cell.label}.png"


def png_bytes(pixels: np.ndarray) -> bytes:
    """A crop's PNG file: (S, S, 1) as grayscale, (S, S, 3) as RGB, 8 bits."""
    from PIL import Image

    arr = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fold_training_cells(cells, fold: Fold) -> list[Cell]:
    """The fold's training cells: every monoculture cell, then the typed annotated cells of its training images."""
    train = list(cells.mono)
    for name in fold.train:
        part = cells.annotated.get(name)
        train += [c for c in (part.cells if part else []) if c.true_type is not None]
    return train


def write_crops(out, train: list[Cell], sources: dict[str, Path], fold: Fold, crop_size: int, data_root,
                reading=None) -> dict:
    """Write the fold's training crops into `out` (see the module's layout); returns the record written.

    Parameters
    ----------
    out : path
        The crop folder (never inside `data_root`); created.
    train : list of Cell
        The fold's training cells (`fold_training_cells`); each has a true type.
    sources : dict
        {image name: its file}: the source images, hashed into the record.
    fold : Fold
        The fold (its index is recorded; its test images must not be among the cells' images).
    crop_size : int
        Side of each crop in pixels (recorded).
    data_root : path
        The data folder (outputs never go inside it).

    Returns
    -------
    dict
        The record: {"fold": k, "crop_size": S, "crops": {"<type>/<name>.png": {"source", "source_sha256", "sha256"}}},
        plus "reading" (the rule the crops were cut under, `Reading.record()`) when `reading` is given.
    """
    out = check_output_dir(out, data=data_root, flag="--out")
    test = set(fold.test)
    leaked = sorted({c.image for c in train} & test)
    if leaked:  # a toolkit error, said plainly rather than written
        raise UserError(f"{leaked[0]} is a test image of {fold_name(fold.index)}; its cells are never written as training crops")
    by_type: dict[str, dict[str, Cell]] = {}
    for c in train:
        by_type.setdefault(check_name(c.true_type, "cell type"), {})[crop_name(c)] = c
    check_outputs(out, [*by_type, RECORD], flag="--out")
    for t, crops in by_type.items():
        check_outputs(out / t, list(crops), flag="--out")
    fingerprint.claim(out, [*sorted(by_type), RECORD], COMMAND)  # after every check, before any write
    sha = {n: fingerprint.file_sha256(p) for n, p in sorted(sources.items()) if n in {c.image for c in train}}
    crops: dict[str, dict] = {}
    for t, cells in sorted(by_type.items()):
        folder = out / t
        fingerprint.claim(folder, sorted(cells), COMMAND)
        for name, c in sorted(cells.items()):
            data = png_bytes(c.pixels)
            write_bytes_atomic(folder / name, data)
            crops[f"{t}/{name}"] = {"source": c.image, "source_sha256": sha[c.image],
                                    "sha256": fingerprint.file_sha256(folder / name)}
        _remove_old(folder, set(cells))
    record = {"fold": fold.index, "crop_size": crop_size, "crops": crops}
    if reading is not None:
        record["reading"] = reading.record()
    fingerprint.write_json(out / RECORD, record, COMMAND)
    return record


def _remove_old(folder: Path, keep: set[str]) -> None:
    """Remove the crops this command wrote into `folder` earlier that are not training crops now (only its own)."""
    from prompts.layout import OUTPUTS_FILE

    owned = fingerprint.claimed(folder)
    old = [n for n, who in owned.items() if who == fingerprint.mark(COMMAND) and n not in keep]
    for name in old:
        p = folder / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    if old:
        rest = {n: w for n, w in owned.items() if n not in old}
        fingerprint.write_json(folder / OUTPUTS_FILE, {"outputs": dict(sorted(rest.items()))}, "outputs record")


def read_record(folder) -> dict:
    """The record of a crop folder written by `phenotype crops`; one UserError line when it is missing or not ours."""
    path = Path(folder) / RECORD
    rec = fingerprint.read(path) if path.is_file() else None
    if not isinstance(rec, dict) or fingerprint.written_by(path) != fingerprint.mark(COMMAND) or not isinstance(rec.get("crops"), dict):
        raise UserError(f"{path} is missing or was not written by `python -m {COMMAND}`; write the fold's crops with it "
                        "(phenotype.crops names the folder of fold_<k>/ crop folders)")
    return rec
