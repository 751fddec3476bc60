"""Folds over the co-culture images, and the training regimes: which cells each fold's classifier learns from.

Regimes (each a mix in the study protocol's sense, tested on the same co-culture test images):

- `zero-shot`: the monoculture cells only (every cell's type is known from its well);
- `retrained-k<k>`: zero-shot plus the annotated cells of k co-culture training images of the fold; the k
  images are the first k of one seeded permutation of the fold's training images, so k = 1 is inside k = 2;
- `co-only`: the annotated cells of every co-culture training image of the fold.

No cell of a fold's test images reaches its classifier: the regime draws co-culture cells from the fold's
training images only, and `phenotype.cv` checks the crop keys (SHA-256 of pixels and mask) of what each
classifier trained on against those of every test cell.

TODO(lead): `make_folds` is the seam for the study protocol (analysis/crossval.py): replace it by the
protocol's fold maker once it is merged; the Fold objects are `prompts.splits.Fold` already.
"""
from __future__ import annotations

import numpy as np

from prompts.errors import UserError
from prompts.splits import Fold

ZERO_SHOT, RETRAINED, CO_ONLY = "zero-shot", "retrained", "co-only"
REGIMES = (ZERO_SHOT, RETRAINED, CO_ONLY)


def regime_names(regimes: list[str], k_list: list[int]) -> list[str]:
    """The study's regimes in order, `retrained` expanded to one per k: ['zero-shot', 'retrained-k1', ..., 'co-only']."""
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise UserError(f"--regimes {' '.join(unknown)}: unknown; choose from {', '.join(REGIMES)} "
                        "(+synthetic, one LoRA per type, is not built yet)")
    names = []
    for r in dict.fromkeys(regimes):
        names += [f"{RETRAINED}-k{k}" for k in sorted(set(k_list))] if r == RETRAINED else [r]
    return names


def uses_mono(regime: str) -> bool:
    return regime != CO_ONLY


def annotated_k(regime: str) -> int | None:
    """k of `retrained-k<k>`; None for the other regimes."""
    return int(regime.rsplit("-k", 1)[1]) if regime.startswith(f"{RETRAINED}-k") else None


def make_folds(names: list[str], groups: list[str | None] | None, n_splits: int, repeats: int, seed: int) -> list[Fold]:
    """Repeated k-fold over the co-culture image names, grouped when `groups` is given.

    Repeat r shuffles with seed `seed + r` (grouped: the groups' order is permuted); folds are repeat-major.
    """
    from sklearn.model_selection import GroupKFold, KFold

    if len(names) < n_splits:
        raise UserError(f"{len(names)} co-culture image(s), fewer than --folds {n_splits}; use --folds {max(2, len(names))} or fewer")
    names_arr = np.asarray(names)
    folds: list[Fold] = []
    for rep in range(repeats):
        rs = seed + rep
        if groups is None:
            parts = KFold(n_splits, shuffle=True, random_state=rs).split(names_arr)
        else:
            keys = [g if g is not None else f"image:{n}" for g, n in zip(groups, names)]
            if len(set(keys)) < n_splits:
                raise UserError(f"only {len(set(keys))} group(s) of co-culture images for --folds {n_splits}; use fewer folds")
            order = {g: i for i, g in enumerate(np.random.default_rng(rs).permutation(sorted(set(keys))))}
            parts = GroupKFold(n_splits).split(names_arr, groups=np.array([order[g] for g in keys]))
        for k, (tr, te) in enumerate(parts):
            folds.append(Fold(len(folds), rep, k, tuple(sorted(names_arr[tr].tolist())), tuple(sorted(names_arr[te].tolist()))))
    return folds


def annotated_images(fold: Fold, k: int, seed: int) -> list[str]:
    """The k annotated co-culture training images of `fold` (first k of a permutation seeded by seed and fold)."""
    order = np.random.default_rng([seed, fold.index]).permutation(len(fold.train))
    return [fold.train[i] for i in order[:k]]


def check_k(folds: list[Fold], regimes: list[str]) -> None:
    """Every retrained-k regime has k training images in every fold, else one line saying which k fits."""
    ks = [annotated_k(r) for r in regimes if annotated_k(r) is not None]
    fewest = min(len(f.train) for f in folds)
    too_many = [k for k in ks if k > fewest]
    if too_many:
        raise UserError(f"--k {' '.join(map(str, too_many))}: a fold has only {fewest} co-culture training image(s); "
                        f"use k <= {fewest} or more images")


def training_images(regime: str, fold: Fold, seed: int) -> list[str]:
    """The co-culture images whose annotated cells the regime adds to its training set in `fold`."""
    k = annotated_k(regime)
    if k is not None:
        return annotated_images(fold, k, seed)
    return list(fold.train) if regime == CO_ONLY else []
