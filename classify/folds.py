"""Stratified (and optionally grouped) repeated k-fold splits in the split-file format."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from prompts.dataset import Dataset, group_keys
from prompts.errors import UserError
from prompts.splits import Fold, Split, check_foldable


def make_split(
    dataset: Dataset, n_splits: int = 5, repeats: int = 1, group_by: str | None = None, seed: int = 0
) -> Split:
    """Repeated stratified k-fold; with `group_by` each group lies in one test fold.

    Repeat r shuffles with seed `seed + r`. Returns a `Split` whose folds are
    ordered repeat-major (index = repeat * n_splits + fold).
    """
    if repeats < 1:
        raise UserError(f"--repeats {repeats}: need at least 1")
    groups = group_keys(dataset, group_by)
    check_foldable(dataset, n_splits, groups)
    paths = np.array([r.path for r in dataset.records])
    labels = np.array([r.label for r in dataset.records])
    folds: list[Fold] = []
    for rep in range(repeats):
        if groups is None:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed + rep)
            parts = splitter.split(paths, labels)
        else:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + rep)
            parts = splitter.split(paths, labels, groups=np.array(groups))
        for k, (tr, te) in enumerate(parts):
            if len(te) == 0:
                raise UserError(f"fold {k} of repeat {rep} is empty; use fewer --folds or another --group-by")
            folds.append(
                Fold(len(folds), rep, k, tuple(sorted(paths[tr].tolist())), tuple(sorted(paths[te].tolist())))
            )
    return Split(
        data=str(dataset.root),
        n_splits=n_splits,
        repeats=repeats,
        seed=seed,
        group_by=group_by,
        classes=dataset.classes,
        folds=folds,
    )
