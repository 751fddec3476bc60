"""Read a synthetic folder written by `python -m generate`.

    SYN/[fold_<k>/]w<weight>/[<cell_line>/]<class>/<name>.png   (+ SYN/manifest.jsonl)

Folder names are parsed with `prompts.layout` (the functions `generate` writes
them with), so every weight `generate` can write (w1.0, w1e-05, w-0.5) reads
back. Each w<weight>/ tree is read with the project's dataset reader. A fold
uses its own `fold_<k>/w<weight>/` tree when present (generator trained without
that fold's test images); otherwise the shared `w<weight>/` tree, which is
flagged as leaky (the generator saw the test images).

Provenance: a tree's `fingerprint.json` (in the tree, else in its `fold_<k>/`
folder) records under `images` the data images its LoRAs were trained on
({data-relative path: sha256}); `check_provenance` compares it with the fold's
test images.
"""
from __future__ import annotations

import logging
from pathlib import Path

from analysis.crossval import SyntheticTrees, find_test_file, read_tree_record, recorded_files
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, fold_name, parse_fold_name, parse_weight_dir

log = logging.getLogger(__name__)
GENERATOR = "python -m generate"  # what writes a tree (and its record) again


class SyntheticSet(SyntheticTrees):
    """`generate`'s trees: `w<weight>/[<cell_line>/]<class>/` folders, each a Dataset; names largest weight first."""

    def order(self, name: str):
        return (-parse_weight_dir(name), name)

    @property
    def weights(self) -> list[str]:
        """Tree names (the w<weight> folder names), largest weight first."""
        return self.names

    def missing(self, fold_index: int, weight: str) -> str:
        fold = fold_name(fold_index)
        return (f"synthetic folder {self.root} has no {weight}/ tree for {fold} and no shared {weight}/; "
                f"generate {fold}/{weight}/ or a shared {weight}/")


def _read_tree(path: Path, classes: list[str]) -> Dataset:
    try:
        ds = read_dataset(path)
    except UserError as err:
        if "holds no images" in str(err):
            raise UserError(f"synthetic tree {path} holds no images; expected {path}/<class>/*.png written by `python -m generate`") from None
        raise
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise UserError(
            f"synthetic class '{unknown[0]}' in {path} is not a class of the real data (classes: {', '.join(classes)}); "
            "remove it or generate for the real classes"
        )
    return ds


def _weight_trees(folder: Path, classes: list[str]) -> dict[str, Dataset]:
    """The w<weight>/ trees directly inside `folder`, by folder name."""
    return {c.name: _read_tree(c, classes) for c in sorted(folder.iterdir())
            if c.is_dir() and parse_weight_dir(c.name) is not None}


def read_synthetic(path, classes: list[str]) -> SyntheticSet:
    """Find and read every w<weight>/ tree (shared and per fold); checks classes and emptiness."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"synthetic folder {root} does not exist; pass the --output folder of `python -m generate`")
    syn = SyntheticSet(root, shared=_weight_trees(root, classes))
    for child in sorted(root.iterdir()):
        k = parse_fold_name(child.name)
        if k is not None and child.is_dir() and (trees := _weight_trees(child, classes)):
            syn.per_fold[k] = trees
    if not syn.weights:
        raise UserError(
            f"synthetic folder {root} is empty: no w<weight>/ trees (e.g. w1.0/<class>/*.png or fold_0/w1.0/<class>/*.png); "
            "run `python -m generate` into it first"
        )
    return syn


# ---------------------------------------------------------------- provenance


def tree_record(tree_root: Path) -> tuple[Path, dict] | None:
    """(file, record) of the fingerprint that describes a tree: its own, else its fold folder's; None if absent."""
    candidates = [tree_root / FINGERPRINT_FILE]
    if parse_fold_name(tree_root.parent.name) is not None:
        candidates.append(tree_root.parent / FINGERPRINT_FILE)
    return read_tree_record(candidates, GENERATOR)


def trained_on(tree_root: Path) -> dict[str, str] | None:
    """{data-relative path: sha256} of the images the tree's LoRAs were trained on; None when not recorded."""
    found = tree_record(tree_root)
    if found is None or "images" not in found[1]:
        return None
    return recorded_files(*found, ("images",), GENERATOR)


def check_provenance(fold_index: int, tree_root: Path, test: dict[str, str]) -> bool:
    """Refuse a tree whose LoRAs were trained on a test image of the fold it is used for.

    test: {data-relative path: sha256} of the fold's test images. Compared by path
    and by content, so a renamed copy is caught. Returns False when the tree has
    no record of its training images (nothing could be checked).
    """
    images = trained_on(tree_root)
    if images is None:
        return False
    if found := find_test_file(images, test):
        hit, how = found
        raise UserError(
            f"synthetic tree {tree_root} was made by LoRAs trained on {fold_name(fold_index)}'s test image {hit}{how}: "
            "it would leak test images into training; use LoRAs trained with this split "
            "(`lora train --split` and `generate --split` with the same file) or pass the split they were trained with"
        )
    return True
