"""Training-mix names (the grammar of `classify.mixes`): which images (real, synthetic, duplicated) form a fold's training set.

Names (`--mixes`, comma-separated):
- `real`          the fold's real training images
- `real+P`        real plus P % synthetic, per class (P % of that class's real training count)
- `synthetic`     synthetic only, as many per class as the real training set has
- `balance`       real, with synthetic images topping every class up to the largest class
- `oversample`    baseline: real, minority classes topped up by random duplicates of real images
- `classweight`   baseline: real, class-weighted loss
- `noaug`         baseline: real, classical augmentation off

The grammar lives in the core so that `prompts check` and the workflow refuse a bad mix
before any job; `classify.mixes` builds the training sets from these names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

_PLUS = re.compile(r"^real\+(\d+(\.\d+)?)%?$")


@dataclass(frozen=True)
class Mix:
    name: str
    kind: str  # real | plus | synthetic | balance | oversample | classweight | noaug
    percent: float = 0.0

    @property
    def uses_synthetic(self) -> bool:
        return self.kind in ("plus", "synthetic", "balance")

    @property
    def class_weighted(self) -> bool:
        return self.kind == "classweight"

    @property
    def augment_off(self) -> bool:
        return self.kind == "noaug"


def parse_mixes(names) -> list[Mix]:
    """'real,real+25,synthetic' or a list -> [Mix]; unknown names are a UserError."""
    if isinstance(names, str):
        names = names.split(",")
    out = []
    for raw in names:
        name = raw.strip().replace("%", "")
        if not name:
            continue
        if m := _PLUS.match(name):
            p = float(m.group(1))
            if p <= 0:
                raise UserError(f"--mixes {raw}: the percentage must be positive")
            out.append(Mix(f"real+{p:g}", "plus", p))
        elif name in ("real", "synthetic", "balance", "oversample", "classweight", "noaug"):
            out.append(Mix(name, name))
        else:
            raise UserError(
                f"--mixes {raw}: unknown mix; use real, real+P (e.g. real+25), synthetic, balance, oversample, classweight, noaug"
            )
    if not out:
        raise UserError("--mixes: no mix given")
    if len({m.name for m in out}) != len(out):
        raise UserError(f"--mixes {','.join(names)}: a mix is listed twice")
    return out
