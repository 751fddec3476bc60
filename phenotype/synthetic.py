"""Generated crops for the `+synthetic` regimes: `generate`'s trees read as cells, checked for leaks.

    SYN/fold_<k>/w<weight>/<type>/<name>.png    (written by `python -m generate --data CROPS/fold_<k>` from
                                                 the fold's LoRAs, one per type; + fingerprint.json)
    CROPS/fold_<k>/crops.json                   (`phenotype crops`: each training crop's source image)

Each generated crop becomes a `Cell` of its type: its pixels (resized to `phenotype.crop_size`, with the
study's channel count) and a mask by Otsu's threshold (the largest foreground component), so both classifiers
see it as they see a real crop: the cnn its pixels (and mask channel), the reference method regionprops of that
mask. A shared `SYN/w<weight>/` tree stands in for a fold without its own, marked leaky (the protocol's rule).

Leakage: a fold's tree records the crops its LoRAs were trained on (`images` in its fingerprint, paths relative
to the crop folder, with SHA-256); each must be a crop of the fold's crop record, and that crop's source image
must not be a test image of the fold, by path or by content (`analysis.crossval.find_test_file`). A tree with
no such record, or without `phenotype.crops`, is used with the protocol's one warning that it is unchecked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.crossval import FoldTree, SyntheticTrees, find_test_file, read_tree_record, recorded_files
from prompts import fingerprint
from prompts.dataset import read_dataset
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, fold_name, parse_fold_name, parse_weight_dir

from .cells import Cell, crop_key
from .crops import read_record

GENERATOR = "python -m generate"


class CropTrees(SyntheticTrees):
    """`generate`'s `w<weight>/<type>/` trees of generated crops (each a `prompts.dataset.Dataset`), largest weight first."""

    def order(self, name: str):
        return (-parse_weight_dir(name), name)


def _weight_trees(folder: Path, types: list[str]) -> dict:
    out = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and parse_weight_dir(child.name) is not None:
            ds = read_dataset(child)
            unknown = sorted(set(ds.classes) - set(types))
            if unknown:
                raise UserError(f"synthetic type '{unknown[0]}' in {child} is not a cell type of the data ({', '.join(types)}); "
                                "generate from the study's crop folders")
            out[child.name] = ds
    return out


def read_trees(path, types: list[str]) -> CropTrees:
    """Every `w<weight>/` tree of a synthetic folder, shared and per fold; one UserError line when there is none."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"phenotype.synthetic {root} does not exist; pass the --output folder of `{GENERATOR}` "
                        "(run on the crop folders of `phenotype crops`)")
    trees = CropTrees(root, shared=_weight_trees(root, types))
    for child in sorted(root.iterdir()):
        k = parse_fold_name(child.name)
        if k is not None and child.is_dir() and (by := _weight_trees(child, types)):
            trees.per_fold[k] = by
    if not trees.names:
        raise UserError(f"phenotype.synthetic {root} holds no w<weight>/<type>/*.png trees (e.g. fold_0/w1.0/<type>/); "
                        f"run `{GENERATOR}` into it first")
    return trees


def otsu_mask(gray: np.ndarray) -> np.ndarray:
    """The largest connected component above Otsu's threshold of a (S, S) image; all True when it is flat."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    if gray.min() == gray.max():
        return np.ones(gray.shape, dtype=bool)
    fg = ndi.binary_fill_holes(gray > threshold_otsu(gray))
    labels, n = ndi.label(fg)
    if n == 0:
        return np.ones(gray.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def generated_cell(path: Path, cell_type: str, size: int, channels: int, name: str) -> Cell:
    """A generated crop as a `Cell`: (size, size, channels) uint8 pixels, its Otsu mask, its crop key."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    pixels = arr[..., None] if arr.ndim == 2 else arr
    gray = pixels[..., 0] if channels == 1 else pixels.mean(axis=2)
    mask = otsu_mask(gray)
    return Cell(name, 0, size / 2, size / 2, int(mask.sum()), cell_type, pixels, mask, crop_key(pixels, mask))


def tree_cells(ds, size: int, channels: int) -> list[Cell]:
    """Every generated crop of a tree as a cell of its type, in path order."""
    return [generated_cell(ds.root / r.path, r.label, size, channels, f"synthetic:{(ds.root / r.path).as_posix()}")
            for r in sorted(ds.records, key=lambda r: r.path)]


def tree_record(tree_root: Path):
    candidates = [tree_root / FINGERPRINT_FILE]
    if parse_fold_name(tree_root.parent.name) is not None:
        candidates.append(tree_root.parent / FINGERPRINT_FILE)
    return read_tree_record(candidates, GENERATOR)


def check_tree(fold_index: int, tree_root: Path, crops_root, test: dict[str, str]) -> bool:
    """Refuse a tree whose LoRAs saw a crop of one of the fold's test images; False when it cannot be checked.

    Parameters
    ----------
    fold_index : int
        The fold the tree is used for.
    tree_root : Path
        The tree (`SYN/fold_<k>/w<weight>`).
    crops_root : path or None
        `phenotype.crops`: the folder of the `fold_<k>/` crop folders.
    test : dict
        {data-relative path: sha256} of the fold's test images.

    Returns
    -------
    bool
        True when every crop the tree's LoRAs were trained on traces to a training image of the fold.
    """
    found = tree_record(tree_root)
    if found is None or "images" not in found[1] or not crops_root:
        return False
    used = recorded_files(*found, ("images",), GENERATOR)
    folder = Path(crops_root) / fold_name(fold_index)
    crops = read_record(folder)["crops"]
    sources = {}
    for crop, sha in sorted(used.items()):
        rec = crops.get(crop)
        if not isinstance(rec, dict) or rec.get("sha256") != sha:
            raise UserError(f"synthetic tree {tree_root} was made by LoRAs trained on {crop}, which is not a crop of "
                            f"{folder / 'crops.json'} (or has other content): its source image cannot be checked against "
                            f"{fold_name(fold_index)}'s test images; train the LoRAs on that crop folder")
        sources[rec["source"]] = rec["source_sha256"]
    if hit := find_test_file(sources, test):
        raise UserError(f"synthetic tree {tree_root} was made by LoRAs trained on crops of {fold_name(fold_index)}'s test "
                        f"image {hit[0]}{hit[1]}: it would leak test cells into training; write the crops with "
                        "`phenotype crops --fold K` and train the fold's LoRAs on them")
    return True


def fold_tree(trees: CropTrees, fold, name: str, crops_root, test_files: dict[str, Path], size: int, channels: int) -> FoldTree:
    """A tree as `fold` sees it: its cells, leaky when shared, checked when its LoRAs' crops trace to training images."""
    ds, leaky = trees.tree(fold.index, name)
    test = {n: fingerprint.file_sha256(test_files[n]) for n in fold.test}
    checked = leaky or check_tree(fold.index, ds.root, crops_root, test)
    return FoldTree(tree_cells(ds, size, channels), leaky, ds.root, checked)
