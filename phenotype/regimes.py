"""Folds over the co-culture images, and the training regimes: which cells each fold's classifier learns from.

Regimes (each a mix in the study protocol's sense, tested on the same co-culture test images):

- `zero-shot`: the monoculture cells only (every cell's type is known from its well);
- `retrained-k<k>`: zero-shot plus the annotated cells of k co-culture training images of the fold; the k
  images are the first k of one seeded permutation of the fold's training images, so k = 1 is inside k = 2;
- `co-only`: the annotated cells of every co-culture training image of the fold;
- `<regime>+P` (the study's word `synthetic`): a scarce regime (each `retrained-k<k>`, or `zero-shot` without
  retrained) plus generated crops of each type, P % of that type's training cells in the regime, drawn from the
  fold's own synthetic tree (one LoRA per type trained on the fold's training crops, `phenotype.crops`,
  `phenotype.synthetic`).

Each regime is a mix of the one grammar (`prompts.mixes.PHENOTYPING`) and runs on the study protocol
(`analysis.crossval`, see `phenotype.cv`): folds come from the one fold rule (`prompts.splits.make_split`) over the
co-culture images, grouped by their group key. No cell of a fold's test images reaches its classifier: the
regime draws co-culture cells from the fold's training images only, and `phenotype.cv` checks the crop keys
(SHA-256 of pixels and mask) of what each classifier trained on against those of every test cell.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prompts.dataset import Dataset, Record
from prompts.errors import UserError
from prompts.mixes import PHENOTYPING_REGIMES, REGIME_PLUS, RETRAINED, Mix, phenotyping_regimes
from prompts.splits import Fold, make_split

ZERO_SHOT, CO_ONLY = "zero-shot", "co-only"
REGIMES = PHENOTYPING_REGIMES  # zero-shot, retrained, co-only, synthetic


def regime_names(regimes: list[str], k_list: list[int], fractions=(0.5,)) -> list[str]:
    """The study's regimes in order, `retrained` expanded to one per k and `synthetic` to `<scarce regime>+P` per
    fraction: ['zero-shot', 'retrained-k1', ..., 'co-only', 'retrained-k1+50'] (`prompts.mixes.phenotyping_regimes`)."""
    return phenotyping_regimes(regimes, k_list, list(fractions))


def base_regime(regime: str) -> str:
    """The regime without its synthetic part: `retrained-k1+50` -> `retrained-k1`."""
    return regime.rsplit("+", 1)[0]


def uses_mono(regime: str) -> bool:
    return base_regime(regime) != CO_ONLY


def annotated_k(regime: str) -> int | None:
    """k of `retrained-k<k>` (and of `retrained-k<k>+P`); None for the other regimes."""
    base = base_regime(regime)
    return int(base.rsplit("-k", 1)[1]) if base.startswith(f"{RETRAINED}-k") else None


CO_CULTURE = "co-culture"  # the class of every co-culture image in the split (folds are not stratified by type)


def co_culture_dataset(root, names: list[str], groups: list[str | None] | None) -> Dataset:
    """The co-culture images as the items the folds are made over; an image without a group is a group of its own.

    Parameters
    ----------
    root : path
        The data folder.
    names : list of str
        The co-culture images' data-relative names.
    groups : list of (str or None), or None
        Their group keys (plate, well, date), or None without grouping.
    """
    keys = [None] * len(names) if groups is None else [g if g is not None else f"image:{n}" for g, n in zip(groups, names)]
    return Dataset(Path(root), [Record(n, CO_CULTURE, group=g) for n, g in zip(names, keys)], "co-culture images")


def make_folds(names: list[str], groups: list[str | None] | None, n_splits: int, repeats: int, seed: int) -> list[Fold]:
    """Repeated k-fold over the co-culture image names, grouped when `groups` is given: the one fold rule
    (`prompts.splits.make_split`), folds repeat-major."""
    dataset = co_culture_dataset(".", names, groups)
    return make_split(dataset, n_splits, repeats, "group" if groups is not None else None, seed).folds


def fold_seed(seed: int, fold: Fold) -> list[int]:
    """The seed of a fold's draw of annotated images: one per fold, shared by every k, so k = 1 lies inside k = 2."""
    return [seed, fold.index]


def regime_images(mix: Mix, train_images: list[str], rng: np.random.Generator) -> list[str]:
    """The co-culture training images whose annotated cells a regime adds: k drawn by `rng` (seeded by
    `fold_seed`), all of them (co-only), or none (zero-shot)."""
    if mix.kind == REGIME_PLUS:
        k = annotated_k(mix.name)
        return regime_images(Mix(mix.base, RETRAINED, k=k) if k else Mix(mix.base, mix.base), train_images, rng)
    if mix.kind == RETRAINED:
        order = rng.permutation(len(train_images))
        return [train_images[i] for i in order[:mix.k]]
    return list(train_images) if mix.kind == CO_ONLY else []


def annotated_images(fold: Fold, k: int, seed: int) -> list[str]:
    """The k annotated co-culture training images of `fold` (first k of a permutation seeded by `fold_seed`)."""
    return regime_images(Mix(f"{RETRAINED}-k{k}", RETRAINED, k=k), list(fold.train), np.random.default_rng(fold_seed(seed, fold)))


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
    return list(fold.train) if base_regime(regime) == CO_ONLY else []
