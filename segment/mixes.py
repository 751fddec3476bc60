"""Training mixes of a fold: real pairs, real + P % synthetic pairs, synthetic pairs only.

The grammar is the core's (`prompts.mixes`, the segmentation vocabulary: `real`, `real+P`, `synthetic`),
counted over all pairs (no classes): `real+P` adds round-half-up(P % x the fold's real training pairs)
synthetic pairs, `synthetic` takes as many synthetic pairs as the fold has real ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from prompts.errors import UserError
from prompts.layout import count_of_fraction
from prompts.mixes import SEGMENTATION, Mix
from prompts.mixes import parse_mixes as _parse


def parse_mixes(names) -> list[Mix]:
    """'real,real+50,synthetic' or a list -> [Mix] of the segmentation vocabulary; other names are a UserError."""
    return _parse(names, SEGMENTATION)


@dataclass(frozen=True)
class PairItem:
    """One training or test pair with the sha256 of its image and mask files."""

    image: Path
    mask: Path
    image_sha: str
    mask_sha: str
    source: str = "real"  # real | synthetic
    name: str = ""

    @property
    def key(self) -> str:
        """The pair's identity (cache and fingerprint key): both contents."""
        return f"{self.image_sha}:{self.mask_sha}"


def training_set(mix: Mix, real: list[PairItem], synthetic: list[PairItem], rng: np.random.Generator) -> tuple[list[PairItem], int]:
    """(training pairs of the mix, shortfall: synthetic pairs wanted but not available)."""
    if mix.kind == "real":
        return list(real), 0
    want = len(real) if mix.kind == "synthetic" else count_of_fraction(len(real), Fraction(str(mix.percent)) / 100)
    got = [synthetic[i] for i in sorted(rng.permutation(len(synthetic))[:want])] if synthetic else []
    if mix.kind == "synthetic" and not got:
        raise UserError("mix 'synthetic': the synthetic tree has no pairs")
    base = [] if mix.kind == "synthetic" else list(real)
    return base + got, want - len(got)
