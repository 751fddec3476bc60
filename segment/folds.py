"""Folds over image-mask pairs: the split-file format of `classify split`, grouped and repeated.

TODO(lead): `make_split` stands in for `classify.folds.make_split` (a room may not import another
room). Once that function lives in a shared layer (prompts.splits or analysis), call it here:
`pairs_dataset` already turns the pairs into the `prompts.dataset.Dataset` it takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prompts.dataset import Dataset, Record, group_keys
from prompts.errors import UserError
from prompts.splits import Fold, Split

NO_CLASS = "cells"  # the label of pairs that belong to no class or cell line


def pairs_dataset(root, pairs) -> Dataset:
    """The pairs as a Dataset of their images (`Pair.name`, data-relative; label: the pair's class, else 'cells')."""
    records = [Record(p.name, p.label or NO_CLASS, group=getattr(p, "group", None) or p.label) for p in pairs]
    return Dataset(Path(root), records, "pairs")


def make_split(dataset: Dataset, n_splits: int, repeats: int, group_by: str | None, seed: int) -> Split:
    """Repeated k-fold over the pairs, stratified by class when there are several, grouped with `group_by`.

    Repeat r shuffles with seed `seed + r`; folds are ordered repeat-major, as in `classify split`.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(dataset.records)
    if n_splits < 2:
        raise UserError(f"--folds {n_splits}: need at least 2 folds")
    if n < n_splits:
        raise UserError(f"{dataset.root} has {n} image-mask pair(s), fewer than --folds {n_splits}; use --folds {max(2, n)} or fewer")
    groups = group_keys(dataset, group_by)
    if groups is not None and len(set(groups)) < n_splits:
        raise UserError(f"only {len(set(groups))} group(s) to split into --folds {n_splits}; use fewer folds or another --group-by")
    labels = np.array([r.label for r in dataset.records])
    stratify = len(set(labels)) > 1 and min(np.unique(labels, return_counts=True)[1]) >= n_splits
    paths = np.array([r.path for r in dataset.records])
    folds: list[Fold] = []
    for rep in range(repeats):
        rs = seed + rep
        if groups is None:
            splitter = StratifiedKFold(n_splits, shuffle=True, random_state=rs) if stratify else KFold(n_splits, shuffle=True, random_state=rs)
            parts = splitter.split(paths, labels)
        else:
            splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=rs) if stratify else GroupKFold(n_splits)
            if not stratify:  # GroupKFold does not shuffle: permute the groups' order per repeat instead
                order = {g: i for i, g in enumerate(np.random.default_rng(rs).permutation(sorted(set(groups))))}
                parts = splitter.split(paths, labels, groups=np.array([order[g] for g in groups]))
            else:
                parts = splitter.split(paths, labels, groups=np.array(groups))
        for k, (tr, te) in enumerate(parts):
            folds.append(Fold(len(folds), rep, k, tuple(sorted(paths[tr].tolist())), tuple(sorted(paths[te].tolist()))))
    return Split(data=str(dataset.root), n_splits=n_splits, repeats=repeats, seed=seed, group_by=group_by,
                 classes=dataset.classes, folds=folds)
