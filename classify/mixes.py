"""Training mixes: which images (real, synthetic, duplicated) form a fold's training set.

Names (`--mixes`, comma-separated):
- `real`          the fold's real training images
- `real+P`        real plus P % synthetic, per class (P % of that class's real training count)
- `synthetic`     synthetic only, as many per class as the real training set has
- `balance`       real, with synthetic images topping every class up to the largest class
- `oversample`    baseline: real, minority classes topped up by random duplicates of real images
- `classweight`   baseline: real, class-weighted loss
- `noaug`         baseline: real, classical augmentation off

Mixes that use synthetic images run once per LoRA-weight tree.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from prompts.errors import UserError
from prompts.layout import count_of_fraction
from prompts.mixes import Mix, parse_mixes  # noqa: F401  (the grammar lives in the core; re-exported)


@dataclass(frozen=True)
class Item:
    """One training or test image. `key` is its content hash (the feature-cache key)."""

    path: Path
    label: str
    key: str
    source: str = "real"  # real | synthetic | duplicate


def counts(items) -> dict[str, dict[str, int]]:
    """{source: {label: n}}"""
    out: dict[str, Counter] = {}
    for it in items:
        out.setdefault(it.source, Counter())[it.label] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def subsample_minority(real: list[Item], fraction: float, minority: str | None, rng: np.random.Generator) -> list[Item]:
    """Keep round-half-up(fraction x largest class count) images (at least 1) of the minority class."""
    if not 0 < fraction <= 1:
        raise UserError(f"--minority-fraction {fraction}: must be in (0, 1], e.g. 0.1 or 0.01")
    by = _by_label(real)
    if minority is None:
        minority = min(by, key=lambda c: (len(by[c]), c))
    if minority not in by:
        raise UserError(f"--minority-class {minority}: not a class of the data (classes: {', '.join(sorted(by))})")
    largest = max(len(v) for c, v in by.items() if c != minority) if len(by) > 1 else len(by[minority])
    keep = max(1, min(len(by[minority]), count_of_fraction(largest, fraction)))
    chosen = rng.choice(len(by[minority]), size=keep, replace=False)
    kept = {id(by[minority][i]) for i in chosen}
    return [it for it in real if it.label != minority or id(it) in kept]


def _by_label(items) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.label, []).append(it)
    return out


def _draw(pool: list[Item], n: int, rng: np.random.Generator) -> list[Item]:
    """n items without replacement (all of them, in random order, when fewer)."""
    if n <= 0 or not pool:
        return []
    idx = rng.permutation(len(pool))[:n]
    return [pool[i] for i in sorted(idx)]


def build_training_set(
    mix: Mix, real: list[Item], synthetic: list[Item], classes: list[str], rng: np.random.Generator
) -> tuple[list[Item], dict[str, int]]:
    """The training items of a mix, and the synthetic shortfall per class (wanted but not available)."""
    real_by, syn_by = _by_label(real), _by_label(synthetic)
    n_real = {c: len(real_by.get(c, [])) for c in classes}
    largest = max(n_real.values())
    if mix.kind in ("real", "classweight", "noaug"):
        return list(real), {}
    if mix.kind == "oversample":
        extra = []
        for c in classes:
            pool = real_by.get(c, [])
            need = largest - len(pool)
            if need > 0 and pool:
                extra += [Item(pool[i].path, c, pool[i].key, "duplicate") for i in sorted(rng.choice(len(pool), need))]
        return list(real) + extra, {}
    want = {}
    for c in classes:
        if mix.kind == "plus":
            want[c] = count_of_fraction(n_real[c], Fraction(str(mix.percent)) / 100)  # the rule `generate` uses
        elif mix.kind == "synthetic":
            want[c] = n_real[c]
        elif mix.kind == "balance":
            want[c] = largest - n_real[c]
    added = []
    shortfall = {}
    for c in classes:
        got = _draw(syn_by.get(c, []), want[c], rng)
        if len(got) < want[c]:
            shortfall[c] = want[c] - len(got)
        added += got
    base = [] if mix.kind == "synthetic" else list(real)
    if mix.kind == "synthetic" and not added:
        raise UserError("mix 'synthetic': the synthetic tree has no images of any class")
    return base + added, shortfall
