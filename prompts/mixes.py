"""Training-mix names, one grammar for every task: which items (real, synthetic, duplicated) form a fold's training set.

Names (`--mixes`, comma-separated); each task accepts a vocabulary of them:
- `real`          the fold's real training items
- `real+P`        real plus P % synthetic (classification: per class, P % of that class's real training count;
                  segmentation: P % of the fold's real training pairs)
- `synthetic`     synthetic only, as many (per class) as the real training set has
- `balance`       classification: real, with synthetic images topping every class up to the largest class
- `oversample`    classification baseline: real, minority classes topped up by random duplicates of real images
- `classweight`   classification baseline: real, class-weighted loss
- `noaug`         classification baseline: real, classical augmentation off
- `zero-shot`     phenotyping: monoculture cells only (every cell's type known from its well)
- `retrained-k<k>` phenotyping: zero-shot plus the annotated cells of k co-culture training images of the fold
- `co-only`       phenotyping: the annotated cells of every co-culture training image of the fold
- `<regime>+P`    phenotyping: a scarce regime (`zero-shot` or `retrained-k<k>`) plus generated crops of each type,
                  P % of that type's training cells in the regime (one LoRA per type, trained on the fold's
                  training crops only); the study names it with the regime word `synthetic`

The grammar lives in the core so that `prompts check` and the workflow refuse a bad mix before any job;
the rooms (`classify.mixes`, `segment.mixes`, `phenotype.regimes`) build the training sets from these names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

_PLUS = re.compile(r"^real\+(\d+(\.\d+)?)%?$")
_RETRAINED = re.compile(r"^retrained-k(\d+)$")
_REGIME_PLUS = re.compile(r"^(zero-shot|retrained-k(\d+))\+(\d+(\.\d+)?)%?$")
PLUS = "plus"  # the kind of `real+P`
RETRAINED = "retrained"  # the kind of `retrained-k<k>`
REGIME_PLUS = "regime+P"  # the kind of phenotyping's `<regime>+P` (zero-shot+50, retrained-k1+50)
# each task's vocabulary: the kinds of mix it can build (PLUS is written real+P)
CLASSIFICATION = ("real", PLUS, "synthetic", "balance", "oversample", "classweight", "noaug")
SEGMENTATION = ("real", PLUS, "synthetic")
PHENOTYPING = ("zero-shot", RETRAINED, "co-only", REGIME_PLUS)  # the regimes as mixes
# the words of `phenotype.regimes`: `retrained` expands to one regime per k, `synthetic` to `<scarce regime>+P`
SYNTHETIC_REGIME = "synthetic"
PHENOTYPING_REGIMES = ("zero-shot", RETRAINED, "co-only", SYNTHETIC_REGIME)
VOCABULARIES = {"classification": CLASSIFICATION, "segmentation": SEGMENTATION, "phenotyping": PHENOTYPING}
_EXAMPLE_PERCENT = {CLASSIFICATION: 25, SEGMENTATION: 50}  # the example each task's message has always given


@dataclass(frozen=True)
class Mix:
    name: str
    kind: str  # real | plus | synthetic | balance | oversample | classweight | noaug | zero-shot | retrained | co-only | regime+P
    percent: float = 0.0
    k: int = 0  # retrained-k<k> (and retrained-k<k>+P): how many annotated images

    @property
    def uses_synthetic(self) -> bool:
        return self.kind in ("plus", "synthetic", "balance", REGIME_PLUS)

    @property
    def base(self) -> str:
        """The regime a `<regime>+P` mix adds generated crops to (its own name for every other mix)."""
        return self.name.rsplit("+", 1)[0] if self.kind == REGIME_PLUS else self.name

    @property
    def class_weighted(self) -> bool:
        return self.kind == "classweight"

    @property
    def augment_off(self) -> bool:
        return self.kind == "noaug"


def parse_mixes(names, vocabulary: tuple[str, ...] = CLASSIFICATION) -> list[Mix]:
    """Mix names -> [Mix], each of a kind in `vocabulary`.

    Parameters
    ----------
    names : str or list
        'real,real+25,synthetic' or a list of names (`%` after P is allowed).
    vocabulary : tuple of str
        The kinds the task builds: `CLASSIFICATION` (default), `SEGMENTATION` or `PHENOTYPING`.

    Returns
    -------
    list of Mix
        In the order given. An unknown name, a kind outside the vocabulary, a non-positive P, an empty
        list or a name listed twice is a `UserError` naming it.
    """
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
            mix = Mix(f"real+{p:g}", PLUS, p)
        elif m := _REGIME_PLUS.match(name):
            p, k = float(m.group(3)), int(m.group(2) or 0)
            if p <= 0 or (m.group(2) is not None and k < 1):
                raise UserError(f"--mixes {raw}: the percentage must be positive and k at least 1")
            base = f"{RETRAINED}-k{k}" if m.group(2) is not None else m.group(1)
            mix = Mix(f"{base}+{p:g}", REGIME_PLUS, p, k=k)
        elif m := _RETRAINED.match(name):
            if int(m.group(1)) < 1:
                raise UserError(f"--mixes {raw}: k must be at least 1")
            mix = Mix(f"{RETRAINED}-k{int(m.group(1))}", RETRAINED, k=int(m.group(1)))
        else:
            mix = Mix(name, name)
        if mix.kind not in vocabulary:
            raise UserError(f"--mixes {raw}: unknown mix; use {_vocabulary_text(vocabulary)}")
        out.append(mix)
    if not out:
        raise UserError("--mixes: no mix given")
    if len({m.name for m in out}) != len(out):
        raise UserError(f"--mixes {','.join(map(str, names))}: a mix is listed twice")
    return out


def _vocabulary_text(vocabulary: tuple[str, ...]) -> str:
    example = f"real+P (e.g. real+{_EXAMPLE_PERCENT.get(vocabulary, 25)})"
    special = {PLUS: example, RETRAINED: f"{RETRAINED}-k<k> (e.g. {RETRAINED}-k2)",
               REGIME_PLUS: f"<zero-shot or {RETRAINED}-k<k>>+P (e.g. {RETRAINED}-k1+50)"}
    words = [special.get(k, k) for k in vocabulary]
    return ", ".join(words) if len(words) > 3 else f"{', '.join(words[:-1])} or {words[-1]}"


def mixes_error(section: str, names, vocabulary: tuple[str, ...]) -> str | None:
    """The one line for a bad `<section>.mixes` in a study file, or None when every name is valid.

    `prompts check` and the workflow both print this line, so a bad mix reads the same from either.

    Parameters
    ----------
    section : str
        The study section the mixes belong to: 'classify' or 'segment'.
    names : str or list
        The section's `mixes` value.
    vocabulary : tuple of str
        The task's vocabulary (`CLASSIFICATION`, `SEGMENTATION`).
    """
    try:
        parse_mixes(names, vocabulary)
    except UserError as err:
        return f"{section}.mixes: {err}".replace(f"{section}.mixes: --mixes ", f"{section}.mixes: ")
    return None


def phenotyping_regimes(regimes, k_list, fractions, key: str = "--regimes") -> list[str]:
    """The expanded regime names of `phenotype.regimes`, in order; a `UserError` naming `key` for an unknown word.

    `retrained` becomes one `retrained-k<k>` per k; `synthetic` becomes `<scarce>+P` per fraction f (P = 100 f) for
    every scarce regime: each `retrained-k<k>` when `retrained` is listed, else `zero-shot`.

    Parameters
    ----------
    regimes : list of str
        Words of `PHENOTYPING_REGIMES`.
    k_list : list of int
        Annotated co-culture images per fold of the retrained regimes.
    fractions : list of float
        Generated crops per type as fractions of the regime's training cells of that type (`phenotype.synthetic_fractions`).
    key : str
        How the message names the setting: `--regimes` (a command) or `phenotype.regimes` (a study file).

    Returns
    -------
    list of str
        e.g. ['zero-shot', 'retrained-k1', 'co-only', 'retrained-k1+50'].
    """
    unknown = [r for r in regimes if r not in PHENOTYPING_REGIMES and _one_regime(r) is None]
    if unknown:
        raise UserError(f"{key} {' '.join(map(str, unknown))}: unknown; choose from {', '.join(PHENOTYPING_REGIMES)} "
                        f"(or one expanded name, e.g. {RETRAINED}-k2 or {RETRAINED}-k1+50)")
    words = list(dict.fromkeys(regimes))
    retrained = [f"{RETRAINED}-k{k}" for k in sorted(set(k_list))]
    names = []
    for r in words:
        if r == RETRAINED:
            names += retrained
        elif r != SYNTHETIC_REGIME:
            names.append(r if r in PHENOTYPING_REGIMES else _one_regime(r))
    names = list(dict.fromkeys(names))
    if SYNTHETIC_REGIME in words:
        if not fractions:
            raise UserError(f"{key} {SYNTHETIC_REGIME}: phenotype.synthetic_fractions is empty; give at least one fraction, e.g. [0.5]")
        scarce = retrained if RETRAINED in words else ["zero-shot"]
        names += [f"{s}+{100 * float(f):g}" for s in scarce for f in dict.fromkeys(fractions)]
    return names


def _one_regime(word) -> str | None:
    """The expanded regime a single name is (`retrained-k2`, `retrained-k1+50`: what a workflow job runs alone), or None."""
    try:
        mixes = parse_mixes([str(word)], PHENOTYPING)
    except UserError:
        return None
    return mixes[0].name if len(mixes) == 1 else None


def phenotyping_error(ph) -> str | None:
    """The one line for bad `phenotype.regimes` (or a baseline that is not one of them), or None.

    `prompts check` and the workflow both print this line (after the study file's name), so a bad regime reads
    the same from either.

    Parameters
    ----------
    ph : prompts.schema.phenotype.PhenotypeSection
        The study's phenotype section.
    """
    try:
        names = phenotyping_regimes(ph.regimes, ph.k, ph.synthetic_fractions, "phenotype.regimes")
    except UserError as err:
        return str(err)
    if ph.baseline not in names:
        return (f"phenotype.baseline {ph.baseline} is not one of the regimes ({', '.join(names)}); name one of them")
    return None
