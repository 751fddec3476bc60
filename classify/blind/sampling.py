"""The draw: which real and synthetic images the test shows, balanced per class and LoRA weight, in a seeded order."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prompts.errors import UserError

from .names import REAL, SYNTHETIC


@dataclass(frozen=True)
class Item:
    """One image of the test. `lora_weight`: the synthetic image's LoRA weight, or the weight block of a real image."""

    id: str
    truth: str  # "real" or "synthetic"
    label: str
    cell_line: str | None
    lora_weight: float
    file: str  # relative to the data folder (real) or the synthetic folder (synthetic)
    path: Path = field(compare=False)


def _synthetic_pools(syn, weights: list[float]) -> dict[tuple[float, str], list[tuple[str, Path, str | None]]]:
    """(weight, class) -> [(file relative to SYN, absolute path, cell line)] over the shared and every fold's tree."""
    from prompts.layout import parse_weight_dir

    pools: dict[tuple[float, str], list] = {}
    trees = list(syn.shared.items()) + [(name, ds) for per in syn.per_fold.values() for name, ds in per.items()]
    for name, ds in trees:
        w = parse_weight_dir(name)
        if w not in weights:
            continue
        for r in ds.records:
            path = ds.abspath(r)
            pools.setdefault((w, r.label), []).append((path.relative_to(syn.root).as_posix(), path, r.cell_line))
    return {key: sorted(v, key=lambda t: t[0]) for key, v in pools.items()}


def choose_weights(syn, wanted: list[float]) -> list[float]:
    from prompts.layout import parse_weight_dir, weight_dir_name

    have = sorted({parse_weight_dir(n) for n in syn.weights} - {None}, reverse=True)
    if not wanted:
        return have
    missing = [w for w in wanted if float(w) not in have]
    if missing:
        raise UserError(
            f"--lora-weights {', '.join(map(str, missing))}: no {weight_dir_name(missing[0])}/ tree in {syn.root} "
            f"(trees there: {', '.join(weight_dir_name(w) for w in have)})"
        )
    return list(dict.fromkeys(float(w) for w in wanted))


def draw_items(dataset, syn, weights: list[float], per_class: int, seed: int) -> list[Item]:
    """The test's images in page order (shuffled): per class and weight, `per_class` real and `per_class` synthetic.

    Raises a UserError naming the class (and weight) that has too few images, before anything is written.
    """
    rng = np.random.default_rng(seed)
    pools = _synthetic_pools(syn, weights)
    picks: list[tuple[str, str, str | None, float, str, Path]] = []
    for label in dataset.classes:
        real = [r for r in dataset.records if r.label == label]
        need = per_class * len(weights)
        if len(real) < need:
            raise UserError(
                f"class {label} has {len(real)} real image(s) in {dataset.root}, the test needs {need} "
                f"(--per-class {per_class} x {len(weights)} LoRA weight(s)); lower --per-class to {len(real) // len(weights)} or less"
            )
        chosen = rng.choice(len(real), size=need, replace=False)
        for j, idx in enumerate(chosen):  # the random sample is cut into one block per weight
            r = real[int(idx)]
            picks.append((REAL, label, r.cell_line, weights[j // per_class], r.path, dataset.abspath(r)))
        for w in weights:
            pool = pools.get((w, label), [])
            if len(pool) < per_class:
                from prompts.layout import weight_dir_name

                raise UserError(
                    f"class {label} has {len(pool)} synthetic image(s) in the {weight_dir_name(w)}/ trees of {syn.root}, "
                    f"the test needs {per_class}; lower --per-class to {len(pool)} or generate more"
                )
            for idx in rng.choice(len(pool), size=per_class, replace=False):
                rel, path, cell_line = pool[int(idx)]
                picks.append((SYNTHETIC, label, cell_line, w, rel, path))
    ids = _opaque_ids(len(picks), rng)
    order = rng.permutation(len(picks))
    return [Item(ids[i], *picks[i]) for i in order]


def _opaque_ids(n: int, rng) -> list[str]:
    """n distinct random 12-hex-digit ids (seeded): nothing about an image can be read from its id."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        s = "".join(f"{b:02x}" for b in rng.integers(0, 256, size=6))
        if s not in seen:
            seen.add(s)
            ids.append(s)
    return ids
