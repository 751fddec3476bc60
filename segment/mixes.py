"""Training mixes of a fold: real pairs, real + P % synthetic pairs, synthetic pairs only.

The names of `classify`'s mixes (`real`, `real+P`, `synthetic`), counted over all pairs (no
classes): `real+P` adds round-half-up(P % x the fold's real training pairs) synthetic pairs,
`synthetic` takes as many synthetic pairs as the fold has real ones.

TODO(lead): the grammar duplicates classify.mixes.parse_mixes (its real/real+P/synthetic part);
move it to the shared `analysis` layer and keep only the pair counting here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from prompts.errors import UserError
from prompts.layout import count_of_fraction

_PLUS = re.compile(r"^real\+(\d+(\.\d+)?)%?$")


@dataclass(frozen=True)
class Mix:
    name: str
    kind: str  # real | plus | synthetic
    percent: float = 0.0

    @property
    def uses_synthetic(self) -> bool:
        return self.kind != "real"


def parse_mixes(names) -> list[Mix]:
    """'real,real+50,synthetic' or a list -> [Mix]; other names are a UserError."""
    if isinstance(names, str):
        names = names.split(",")
    out = []
    for raw in names:
        name = str(raw).strip().replace("%", "")
        if not name:
            continue
        if m := _PLUS.match(name):
            p = float(m.group(1))
            if p <= 0:
                raise UserError(f"--mixes {raw}: the percentage must be positive")
            out.append(Mix(f"real+{p:g}", "plus", p))
        elif name in ("real", "synthetic"):
            out.append(Mix(name, name))
        else:
            raise UserError(f"--mixes {raw}: unknown mix; use real, real+P (e.g. real+50) or synthetic")
    if not out:
        raise UserError("--mixes: no mix given")
    if len({m.name for m in out}) != len(out):
        raise UserError(f"--mixes {','.join(map(str, names))}: a mix is listed twice")
    return out


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
