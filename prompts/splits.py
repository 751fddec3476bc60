"""The split file (JSON) written by `classify split` and read by all three commands, and `make_split`, the one
rule that makes it for every task (images with classes, image-mask pairs).

{"version": 1, "data": ..., "n_splits": 5, "repeats": 1, "seed": ..., "group_by": ...,
 "classes": [...], "folds": [{"repeat": 0, "fold": 0, "train": [relpaths], "test": [relpaths]}, ...]}

A fold is addressed by its index in `folds` (`--fold K`); with one repeat that is
its fold number. Its output folder is `fold_<K>` (`prompts.layout.fold_name`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .dataset import PAIRS_SOURCE, Dataset, group_keys
from .errors import UserError
from .files import read_json_mapping, write_json_atomic
from .layout import fold_name

SPLIT_VERSION = 1


@dataclass(frozen=True)
class Fold:
    index: int
    repeat: int
    fold: int
    train: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        return fold_name(self.index)


@dataclass
class Split:
    data: str
    n_splits: int
    repeats: int
    seed: int | None
    group_by: str | None
    classes: list[str]
    folds: list[Fold]
    path: Path | None = None

    def to_json(self) -> dict:
        return {
            "version": SPLIT_VERSION,
            "data": self.data,
            "n_splits": self.n_splits,
            "repeats": self.repeats,
            "seed": self.seed,
            "group_by": self.group_by,
            "classes": list(self.classes),
            "folds": [
                {"repeat": f.repeat, "fold": f.fold, "train": list(f.train), "test": list(f.test)} for f in self.folds
            ],
        }

    def select(self, fold: int | str | None) -> list[Fold]:
        """Folds chosen by `--fold`: an index, 'all', or None (all)."""
        if fold is None or str(fold) == "all":
            return list(self.folds)
        try:
            k = int(fold)
        except (TypeError, ValueError):
            raise UserError(f"--fold {fold}: expected a fold index or 'all'") from None
        if not 0 <= k < len(self.folds):
            raise UserError(f"--fold {k}: the split file {self.path} has folds 0..{len(self.folds) - 1}")
        return [self.folds[k]]


def write_split(path: str | os.PathLike, split: Split) -> None:
    write_json_atomic(path, split.to_json())


def read_split(path: str | os.PathLike, dataset: Dataset | None = None) -> Split:
    """Read and validate a split file; with `dataset`, check that it was made for that data.

    Every problem is a UserError naming the file and the key (e.g. `folds[2].train`).
    """
    path = Path(path)
    raw = read_json_mapping(path, "split file", "write one with `python -m classify split`")
    if raw.get("version") != SPLIT_VERSION or not isinstance(raw.get("folds"), list):
        raise UserError(f"split file {path} is not a version-{SPLIT_VERSION} split file; write one with `python -m classify split`")
    if not raw["folds"]:
        raise UserError(f"split file {path}: 'folds' is empty; write one with `python -m classify split`")
    folds = [_read_fold(path, i, f) for i, f in enumerate(raw["folds"])]
    classes = raw.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"split file {path}: 'classes' must be a list of class names, got {_kind(classes)}")
    split = Split(
        data=str(raw.get("data", "")),
        n_splits=_int_key(path, raw, "n_splits", len(folds)),
        repeats=_int_key(path, raw, "repeats", 1),
        seed=raw.get("seed"),
        group_by=raw.get("group_by"),
        classes=list(classes),
        folds=folds,
        path=path,
    )
    if dataset is not None:
        check_split_matches(split, dataset)
    return split


def _kind(value) -> str:
    """How a JSON value reads in an error message: 'a string', 'a number', ..."""
    names = {str: "a string", bool: "true/false", int: "a number", float: "a number", dict: "a mapping", list: "a list"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _int_key(path: Path, raw: dict, key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"split file {path}: '{key}' must be a positive whole number, got {value!r}")
    return value


def _read_fold(path: Path, i: int, f) -> Fold:
    """One entry of `folds`: lists of data-relative image paths, no image in both."""
    if not isinstance(f, dict):
        raise UserError(f"split file {path}: folds[{i}] must be a mapping with 'train' and 'test' lists, got {_kind(f)}")
    parts = {}
    for key in ("train", "test"):
        value = f.get(key)
        if not isinstance(value, list):
            got = "nothing" if key not in f else _kind(value)
            raise UserError(
                f"split file {path}: folds[{i}].{key} must be a list of image paths relative to the data folder, got {got}; "
                "write the split with `python -m classify split`"
            )
        for p in value:
            if not isinstance(p, str) or not p or p.startswith("/") or ".." in p.replace("\\", "/").split("/"):
                raise UserError(
                    f"split file {path}: folds[{i}].{key} holds {p!r}; entries must be image paths inside the data "
                    "folder, relative to it (no absolute path, no '..')"
                )
        parts[key] = tuple(value)
    train, test = parts["train"], parts["test"]
    overlap = set(train) & set(test)
    if overlap:
        raise UserError(f"split file {path}: folds[{i}] has {len(overlap)} image(s) in both train and test, e.g. {sorted(overlap)[0]}")
    repeat, number = f.get("repeat", 0), f.get("fold", i)
    for key, value in (("repeat", repeat), ("fold", number)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"split file {path}: folds[{i}].{key} must be a whole number >= 0, got {value!r}")
    return Fold(i, repeat, number, train, test)


def check_split_matches(split: Split, dataset: Dataset) -> None:
    """Every path in the split must be an image of the dataset with a known class."""
    have = dataset.by_path()
    for fold in split.folds:
        missing = [p for p in (*fold.train, *fold.test) if p not in have]
        if missing:
            raise UserError(
                f"split file {split.path} does not match data folder {dataset.root}: {len(missing)} image(s) of fold "
                f"{fold.index} are not there, e.g. {missing[0]}; write a new split for this data with `python -m classify split`"
            )
    if split.classes and sorted(split.classes) != dataset.classes:
        raise UserError(
            f"split file {split.path} lists classes {', '.join(split.classes)} but {dataset.root} has {', '.join(dataset.classes)}; "
            "write a new split for this data"
        )


def check_foldable(dataset: Dataset, n_splits: int, groups: list[str] | None = None) -> None:
    """Raise a UserError naming a class that has fewer images (or groups) than folds."""
    if n_splits < 2:
        raise UserError(f"--folds {n_splits}: need at least 2 folds")
    what = "image-mask pair(s)" if dataset.source == PAIRS_SOURCE else "image(s)"
    for label, count in dataset.class_counts().items():
        if count < n_splits:
            raise UserError(
                f"class '{label}' has {count} {what} in {dataset.root}, fewer than --folds {n_splits}; "
                f"add {what.replace('(s)', 's')} or use --folds {max(2, count)} or fewer"
            )
    if groups is not None:
        per_class: dict[str, set] = {}
        for r, g in zip(dataset.records, groups):
            per_class.setdefault(r.label, set()).add(g)
        n_groups = len(set(groups))
        if n_groups < n_splits:
            raise UserError(f"only {n_groups} group(s) to split into --folds {n_splits}; use fewer folds or another --group-by")
        for label, gs in sorted(per_class.items()):
            if len(gs) < n_splits:
                raise UserError(
                    f"class '{label}' spans only {len(gs)} group(s), fewer than --folds {n_splits}: some test folds would "
                    f"lack it; use --folds {max(2, len(gs))} or another --group-by"
                )


def make_split(
    dataset: Dataset, n_splits: int = 5, repeats: int = 1, group_by: str | None = None, seed: int = 0
) -> Split:
    """Repeated stratified k-fold over a dataset's items; with `group_by` each group lies in one test fold.

    One rule for every task (`classify split` and `classify cv` over images, `segment cv` and the
    workflow's pair split over image-mask pairs, whose class is their cell line or 'cells'):
    - every class needs at least `n_splits` items, and with `group_by` at least `n_splits` groups
      (`check_foldable`): otherwise some test folds would lack it; the smallest is named;
    - folds are stratified by class; with `group_by`, StratifiedGroupKFold keeps each group whole;
    - a fold left with no test item is refused, naming it.

    Parameters
    ----------
    dataset : Dataset
        The items (images, or pairs as `pairs_dataset` gives them), each with a class label.
    n_splits : int
        Folds per repeat (>= 2).
    repeats : int
        Repeat r shuffles with seed `seed + r` (>= 1).
    group_by : str or None
        `prompts.dataset.group_keys`' column or `regex:PATTERN`.
    seed : int
        The first repeat's shuffling seed.

    Returns
    -------
    Split
        Folds ordered repeat-major (index = repeat * n_splits + fold), paths data-relative and sorted.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

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
            check_fold_not_empty(te, k, rep)
            folds.append(Fold(len(folds), rep, k, tuple(sorted(paths[tr].tolist())), tuple(sorted(paths[te].tolist()))))
    return Split(data=str(dataset.root), n_splits=n_splits, repeats=repeats, seed=seed, group_by=group_by,
                 classes=dataset.classes, folds=folds)


def check_fold_not_empty(test_rows, fold: int, repeat: int) -> None:
    """A fold with no test item tests nothing: refuse it, naming the fold and what to change."""
    if len(test_rows) == 0:
        raise UserError(f"fold {fold} of repeat {repeat} is empty; use fewer --folds or another --group-by")
