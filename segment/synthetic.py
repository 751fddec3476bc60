"""Synthetic image-mask pairs written by `controlnet generate`, per fold, and their provenance.

    SYN/[fold_<k>/][<tree>/]images/<name>.png + masks/<name>.png   (+ manifest.jsonl, fingerprint.json)

A tree is a folder holding `images/` (read with `prompts.pairs.read_pairs`); its name is its path
below the fold folder (or SYN), e.g. `d2.0` for a density, or `synthetic` when the fold folder
holds the pairs itself. A fold uses its own `fold_<k>/<tree>/` when present (a generator trained
without that fold's test pairs); otherwise a shared `<tree>/`, flagged as leaky.

Provenance: `fingerprint.json` of the tree (else of its fold folder, else of SYN) records under
`images` the data pairs its ControlNet was trained on ({data-relative image path: sha256}), and
under `masks` any further data masks the conditions were made from. `check_provenance` refuses a
tree whose record names a test pair of its fold, by path or by content.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.crossval import SyntheticTrees, find_test_file, read_tree_record, recorded_files
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, fold_name, parse_fold_name

IMAGES_DIR = "images"
SHARED = None  # the fold key of trees shared by every fold
GENERATOR = "controlnet generate"  # what writes a tree (and its record) again


class LeakError(UserError):
    """A synthetic pair, or the generator that made it, saw a test pair of the fold it would train."""


@dataclass
class Tree:
    name: str
    root: Path
    pairs: list  # prompts.pairs.Pair


class SyntheticPairs(SyntheticTrees):
    """`controlnet generate`'s trees of image-mask pairs (`Tree`), by name."""

    def missing(self, fold_index: int, name: str) -> str:
        return (f"synthetic folder {self.root} has no {name} pairs for {fold_name(fold_index)} and no shared {name}/; "
                f"generate {fold_name(fold_index)}/{name}/ with `controlnet generate`")


def _trees_in(folder: Path, default_name: str) -> dict[str, Tree]:
    """Trees at or below `folder` (depth <= 2), not entering fold folders."""
    from prompts.pairs import read_pairs

    found: dict[str, Tree] = {}

    def visit(d: Path, depth: int) -> None:
        if (d / IMAGES_DIR).is_dir():
            name = d.relative_to(folder).as_posix() if d != folder else default_name
            try:
                pairs = read_pairs(d)
            except UserError as err:
                raise UserError(f"synthetic pairs in {d}: {err}") from None
            if not pairs:
                raise UserError(f"synthetic tree {d} holds no pairs; expected {d}/images/ and {d}/masks/ written by `controlnet generate`")
            found[name] = Tree(name, d, pairs)
            return
        if depth == 2:
            return
        for child in sorted(d.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and parse_fold_name(child.name) is None:
                visit(child, depth + 1)

    visit(folder, 0)
    return found


def read_synthetic(path) -> SyntheticPairs:
    """Every tree of SYN, shared and per fold; an empty folder is a UserError."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"synthetic folder {root} does not exist; pass the --output folder of `controlnet generate`")
    syn = SyntheticPairs(root, shared=_trees_in(root, "synthetic"))
    for child in sorted(root.iterdir()):
        k = parse_fold_name(child.name)
        if k is not None and child.is_dir() and (trees := _trees_in(child, "synthetic")):
            syn.per_fold[k] = trees
    if not syn.names:
        raise UserError(f"synthetic folder {root} holds no pairs (no images/ + masks/ folders, e.g. fold_0/images/); "
                        "run `controlnet generate` into it first")
    return syn


# ---------------------------------------------------------------- provenance


def tree_record(tree: Path, syn_root: Path) -> tuple[Path, dict] | None:
    """(file, record) of the fingerprint describing a tree: its own, else its fold folder's, else SYN's."""
    candidates = [tree / FINGERPRINT_FILE]
    for parent in tree.parents:
        candidates.append(parent / FINGERPRINT_FILE)
        if parent == syn_root or parse_fold_name(parent.name) is not None:
            break
    return read_tree_record(candidates, GENERATOR)


def trained_on(tree: Path, syn_root: Path) -> dict[str, str] | None:
    """{data-relative path: sha256} of the data files the tree's generator and conditions came from; None when not recorded."""
    found = tree_record(tree, syn_root)
    if found is None or "images" not in found[1]:
        return None
    return recorded_files(*found, ("images", "masks"), GENERATOR)


def check_provenance(fold_index: int, tree: Path, syn_root: Path, test: dict[str, str]) -> bool:
    """Refuse (LeakError) a tree made from a test pair of the fold; False when the tree has no record.

    test: {data-relative path: sha256} of the fold's test images and masks. Compared by path and
    by content, so a renamed copy is caught.
    """
    used = trained_on(tree, syn_root)
    if used is None:
        return False
    if found := find_test_file(used, test):
        hit, how = found
        raise LeakError(f"synthetic pairs {tree} were made from {fold_name(fold_index)}'s test pair {hit}{how}: it would leak "
                        "test images into training; generate per fold from the fold's training pairs (`controlnet train "
                        "--split` and `controlnet generate --split` with this split)")
    return True
