"""What the reader must be warned about: smoke runs, degenerate classifiers, chance-level baselines, folds
without a class, leaks, and outputs dropped from the study."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.report import smoke_banner
from analysis.tables import Text
from prompts import layout

from ..results import CHANCE_LEVEL, NEAR_CONSTANT, NEAR_CONSTANT_FLAG, SINGLE_CLASS, CVResults, predicted_shares
from .text import tree_title

SMOKE_ADVICE = ("It shows that every stage runs and what the report looks like; for results use real weights "
                "(README, \"Real weights\").")


def _stand_in_weights(weights: str | None) -> bool:
    """True for a weights file that `classify calibrate-weights` wrote (random weights, calibrated BatchNorm)."""
    from ..model import is_stand_in_weights

    return bool(weights) and weights not in ("imagenet", "none") and is_stand_in_weights(weights)


def _smoke_models(synthetic: str | None) -> list[str]:
    """Base models named in the synthetic folder's manifest whose folder holds the tiny-model marker."""
    if not synthetic:
        return []
    try:
        lines = (Path(synthetic) / layout.MANIFEST_FILE).read_text().splitlines()
    except OSError:
        return []
    models = set()
    for line in lines:
        try:
            models.add(json.loads(line).get("model"))
        except (json.JSONDecodeError, AttributeError):
            continue
    # a relative model path was relative to where `generate` ran: try here and beside the synthetic folder
    return sorted(m for m in models if m and any((base / m / layout.TINY_MODEL_MARKER).is_file()
                                                for base in (Path.cwd(), Path(synthetic).resolve().parent)))


def smoke_reasons(res: CVResults | dict) -> list[str]:
    """Why this run's numbers mean nothing (empty for a real run)."""
    res = CVResults.of(res)
    weights = res.settings.weights
    out = []
    if str(weights).lower() == "none":
        out.append("the classifier's base has random weights (`weights: none`), so its features carry nothing")
    elif _stand_in_weights(weights):
        out.append(f"the classifier's base has calibrated random stand-in weights (`{weights}`), not ImageNet's")
    tiny = _smoke_models(res.synthetic)
    if tiny:
        out.append(f"the synthetic images come from the tiny random Stable Diffusion (`{tiny[0]}`): noise, not micrographs")
    return out


def smoke_block(res: CVResults) -> list:
    banner = smoke_banner(smoke_reasons(res), SMOKE_ADVICE)
    return [banner] if banner else []


def constant_predictions(res: CVResults | dict) -> dict[tuple[str, str], list[str]]:
    """(tree, mix) -> the class predicted in each fold, for mixes flagged single-class."""
    res = CVResults.of(res)
    return {(r.tree, r.mix): [res.classes[int(np.flatnonzero(run.predicted)[0])] for run in res.runs_of(r.tree, r.mix)]
            for r in res.rows() if SINGLE_CLASS in r.flags}


def near_constant(res: CVResults | dict) -> dict[tuple[str, str], str]:
    """(tree, mix) -> 'N of M test images <class>' for mixes flagged near-constant."""
    res = CVResults.of(res)
    out = {}
    for r in res.rows():
        if NEAR_CONSTANT_FLAG in r.flags:
            runs = res.runs_of(r.tree, r.mix)
            total = np.sum([run.predicted for run in runs], axis=0)
            per_fold, overall, k = predicted_shares(runs)
            worst = max(range(len(runs)), key=lambda i: per_fold[i])
            out[(r.tree, r.mix)] = (f"{int(total.max())} of {int(total.sum())} test images `{res.classes[k]}`"
                                    + (f"; {per_fold[worst]:.0%} one class in {layout.fold_name(runs[worst].fold)}"
                                       if overall < NEAR_CONSTANT else ""))
    return out


def degenerate_blocks(res: CVResults) -> list:
    """Warnings for single-class and near-constant classifiers and for a chance-level `real` baseline."""
    blocks = []
    single = constant_predictions(res)
    if single:
        blocks.append(Text("**Warning — classifiers that predicted a single class in every fold:** " + "; ".join(
            f"`{mix}` ({tree_title(tree)}: {', '.join(sorted(set(predicted)))})" for (tree, mix), predicted in single.items())
            + ". They learned nothing from the images; their metrics only reflect the class balance.", "warn"))
    near = near_constant(res)
    if near:
        blocks.append(Text(f"**Warning — classifiers that predicted nearly one class (≥ {NEAR_CONSTANT:.0%} of a fold's or of "
                           "all test images):** " + "; ".join(f"`{mix}` ({tree_title(tree)}: {what})"
                                                             for (tree, mix), what in near.items())
                           + ". Their metrics mostly reflect the class balance, not the images.", "warn"))
    chance = res.flags.get(CHANCE_LEVEL)
    if chance:
        blocks.append(Text(
            f"**Warning — the `real` baseline is at chance level:** balanced accuracy {chance['balanced_accuracy']:.3f} "
            f"(95 % CI {chance['ci_low']:.3f} to {chance['ci_high']:.3f}) with {len(res.classes)} classes (chance "
            f"{chance['chance']:.3f}). The classifier learned little from the real images, so differences between "
            "mixes say little about synthetic images.", "warn"))
    return blocks


def absent_classes(res: CVResults | dict) -> dict[int, list[str]]:
    """Fold index -> classes with no test image in that fold (the same for every run of the fold)."""
    res = CVResults.of(res)
    out: dict[int, list[str]] = {}
    for r in res.runs:
        pc = r.metrics["per_class"]
        missing = [c for c in res.classes if pc.get(c, {}).get("support", 1) == 0]
        if missing:
            out[r.fold] = missing
    return dict(sorted(out.items()))


def absent_blocks(res: CVResults) -> list:
    absent = absent_classes(res)
    if not absent:
        return []
    return [Text("**Folds without test images of some class:** " + "; ".join(
        f"{layout.fold_name(k)} (no {', '.join(v)})" for k, v in absent.items())
        + ". Macro precision, recall and F1 of those folds average over the classes present; the absent class's own "
          "metrics leave those folds out.", "warn")]


def leak_blocks(res: CVResults) -> list:
    out = []
    for tree, rows in res.tables.items():
        leaky = sorted({k for r in rows for k in r.leaky_folds})
        if leaky:
            out.append(Text(
                f"**Warning — the generator saw the test images ({tree_title(tree)}).** Fold(s) "
                f"{', '.join(layout.fold_name(k) for k in leaky)} used the shared synthetic tree `{tree}/` because no "
                f"`fold_<k>/{tree}/` exists; its LoRA was trained on images that are in those test folds, so synthetic "
                "mixes may score too high there. Train LoRAs per fold (`python -m lora train --split ...`) to remove the leak.",
                "warn"))
    return out
