"""Read a synthetic folder written by `python -m generate`.

    SYN/[fold_<k>/]w<weight>/[<cell_line>/]<class>/<name>.png   (+ SYN/manifest.jsonl)

Each w<weight>/ tree is read with the project's dataset reader. A fold uses
its own `fold_<k>/w<weight>/` tree when present (generator trained without that
fold's test images); otherwise the shared `w<weight>/` tree, which is flagged
as leaky (the generator saw the test images).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError

_W = re.compile(r"^w\d+(\.\d+)?$")
_F = re.compile(r"^fold_(\d+)$")


@dataclass
class SyntheticSet:
    root: Path
    shared: dict[str, Dataset] = field(default_factory=dict)  # 'w1.0' -> tree
    per_fold: dict[int, dict[str, Dataset]] = field(default_factory=dict)  # fold index -> 'w1.0' -> tree

    @property
    def weights(self) -> list[str]:
        names = set(self.shared)
        for trees in self.per_fold.values():
            names |= set(trees)
        return sorted(names, key=lambda w: -float(w[1:]))

    def tree(self, fold_index: int, weight: str) -> tuple[Dataset, bool]:
        """(tree for this fold and weight, leaky) — leaky when the shared set stands in."""
        own = self.per_fold.get(fold_index, {}).get(weight)
        if own is not None:
            return own, False
        if weight in self.shared:
            return self.shared[weight], True
        raise UserError(
            f"synthetic folder {self.root} has no {weight}/ tree for fold_{fold_index} and no shared {weight}/; "
            f"generate fold_{fold_index}/{weight}/ or a shared {weight}/"
        )


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


def read_synthetic(path, classes: list[str]) -> SyntheticSet:
    """Find and read every w<weight>/ tree (shared and per fold); checks classes and emptiness."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"synthetic folder {root} does not exist; pass the --output folder of `python -m generate`")
    syn = SyntheticSet(root)
    for child in sorted(root.iterdir()):
        if child.is_dir() and _W.match(child.name):
            syn.shared[child.name] = _read_tree(child, classes)
        elif child.is_dir() and (m := _F.match(child.name)):
            trees = {c.name: _read_tree(c, classes) for c in sorted(child.iterdir()) if c.is_dir() and _W.match(c.name)}
            if trees:
                syn.per_fold[int(m.group(1))] = trees
    if not syn.weights:
        raise UserError(
            f"synthetic folder {root} is empty: no w<weight>/ trees (e.g. w1.0/<class>/*.png or fold_0/w1.0/<class>/*.png); "
            "run `python -m generate` into it first"
        )
    return syn
