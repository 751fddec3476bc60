"""`phenotype cv`: every classifier under every regime in the same folds over the co-culture images.

Order of work: check the settings and the data (nothing is written before), cut every cell once, compute
every cell's features once per classifier (cached by crop key), then per fold, classifier and regime fit
on the regime's training cells and predict the fold's test cells. The results dict is what results.json
holds; `phenotype.report` renders it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from analysis.matching import Match, matching
from analysis.stats import mean_std
from analysis.verdicts import decide_family
from prompts import fingerprint
from prompts.errors import UserError
from prompts.guard import check_output_dir, check_outputs, check_replace
from prompts.layout import REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON
from prompts.pairs import load_mask
from prompts.splits import Fold

from . import models as M
from .cells import CLASSICAL, GIVEN, Cell, CellSet, source_cells, truth_cells
from .data import POINTS, PhenotypeData, read_data
from .metrics import METRICS, cell_metrics, count_metrics, counts, improvement
from .regimes import check_k, make_folds, regime_names, training_images, uses_mono

log = logging.getLogger(__name__)
COMMAND = "phenotype cv"
OVERLAYS_DIR = "overlays"
CACHE_DIR = "cache"
CALIBRATION_CELLS = 256  # monoculture crops that calibrate the BatchNorm of `weights: calibrated`
OUTPUT_NAMES = (REPORT_MD, REPORT_HTML, RESULTS_CSV, RESULTS_JSON, OVERLAYS_DIR, CACHE_DIR)


# --------------------------------------------------------------------------- settings


def check_settings(ph, data: PhenotypeData) -> tuple[list[str], list[str]]:
    """(models, regime names) of the section, checked against the data; one UserError line for the first problem."""
    models = list(dict.fromkeys(ph.models))
    unknown = [m for m in models if m not in M.MODELS]
    if unknown or not models:
        raise UserError(f"--models {' '.join(unknown) or '(none)'}: choose from {', '.join(M.MODELS)}")
    regimes = regime_names(ph.regimes, ph.k)
    if ph.baseline not in regimes:
        raise UserError(f"--baseline {ph.baseline}: not one of the regimes ({', '.join(regimes)}); name one of them")
    if not data.mono and any(uses_mono(r) for r in regimes):
        raise UserError(f"{data.root}: no mono/<type>/ folders, so regimes {', '.join(r for r in regimes if uses_mono(r))} "
                        "have nothing to learn from; add monocultures or use --regimes co-only")
    if data.truth == POINTS and any(training_images_needed(r) for r in regimes):
        raise UserError(f"{data.root}/co/points.csv gives points for counting alone, so no co-culture cell can be trained on; "
                        "use --regimes zero-shot, or give cell_types.csv or type maps with instance masks")
    if M.CNN in models:  # the cnn's weights are checked only when the cnn runs
        M.check_weights(ph.weights)
    return models, regimes


def training_images_needed(regime: str) -> bool:
    return not regime.startswith("zero-shot")


def check_output(ph, data_section) -> Path:
    out = check_output_dir(ph.output, data=data_section.data)
    check_outputs(out, OUTPUT_NAMES)
    check_replace(out / RESULTS_JSON, overwrite=ph.overwrite)
    return out


# --------------------------------------------------------------------------- cells and features


@dataclasses.dataclass
class StudyCells:
    """Every cell of the study: monoculture cells, annotated co-culture cells (training), test cells per image."""

    mono: list[Cell]
    annotated: dict[str, CellSet]
    test: dict[str, CellSet]

    def all_cells(self) -> list[Cell]:
        seen, out = set(), []
        for c in [*self.mono, *(c for s in self.annotated.values() for c in s.cells), *(c for s in self.test.values() for c in s.cells)]:
            if id(c) not in seen:
                seen.add(id(c))
                out.append(c)
        return out


def segmentation_of(ph, data: PhenotypeData) -> str:
    """given, or classical when asked or when a co-culture image has no mask."""
    return CLASSICAL if ph.segmentation == CLASSICAL or any(im.mask is None for im in data.co) else GIVEN


def collect_cells(data: PhenotypeData, ph, progress: bool = False) -> StudyCells:
    """Cut every cell once (see `phenotype.cells`)."""
    seg = segmentation_of(ph, data)
    images = data.mono + data.co
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="cells", unit="img", leave=False)
    mono, annotated, test = [], {}, {}
    for im in images:
        if im.is_mono:
            mono += source_cells(im, ph.crop_size, seg, ph.min_size, ph.min_distance).cells
            continue
        if data.truth != POINTS:
            annotated[im.name] = truth_cells(im, ph.crop_size)
        test[im.name] = annotated[im.name] if seg == GIVEN and im.name in annotated else \
            source_cells(im, ph.crop_size, seg, ph.min_size, ph.min_distance)
    return StudyCells(mono, annotated, test)


def reference_features(cells: list[Cell], cache: M.FeatureCache) -> None:
    missing = set(cache.missing(c.key for c in cells))
    todo = {c.key: c for c in cells if c.key in missing}
    if todo:
        cache.add(list(todo), np.stack([M.reference_features(c.pixels, c.mask) for c in todo.values()]))


def cnn_features(cells: list[Cell], mono: list[Cell], ph, cache_dir: Path, seed: int) -> M.FeatureCache:
    """The cnn's features of every cell, through its cache (the base is built only when a crop is missing)."""
    weights = M.check_weights(ph.weights)
    mono = mono[:CALIBRATION_CELLS]  # one forward pass calibrates BatchNorm: a bounded batch
    extractor = M.cnn_id(ph.backbone, weights, ph.cnn_size, ph.mask_channel, seed, [c.key for c in mono])
    cache = M.FeatureCache(cache_dir, extractor)
    missing = set(cache.missing(c.key for c in cells))
    todo = {c.key: c for c in cells if c.key in missing}
    if todo:
        def inputs(cs):
            return M.cnn_inputs(np.stack([c.pixels for c in cs]), np.stack([c.mask for c in cs]), ph.cnn_size, ph.mask_channel)

        calibration = inputs(mono) if weights == "calibrated" and mono else None
        base = M.build_cnn_base(ph.backbone, weights, ph.cnn_size, seed, calibration)
        batch = list(todo.values())
        for i in range(0, len(batch), 512):  # bounded memory: inputs of 512 crops at a time
            part = batch[i:i + 512]
            cache.add([c.key for c in part], M.cnn_features(base, inputs(part), ph.batch_size))
    return cache


def feature_caches(cells: StudyCells, models: list[str], ph, cache_dir: Path) -> dict[str, M.FeatureCache]:
    everything = cells.all_cells()
    caches = {}
    for model in models:
        if model == M.REFERENCE:
            caches[model] = M.FeatureCache(cache_dir, M.reference_id())
            reference_features(everything, caches[model])
        else:
            caches[model] = cnn_features(everything, cells.mono, ph, cache_dir, ph.seed)
        caches[model].save()
    return caches


# --------------------------------------------------------------------------- one fold


def regime_training_cells(regime: str, fold: Fold, cells: StudyCells, seed: int) -> tuple[list[Cell], list[str]]:
    """(training cells, co-culture images they come from) of `regime` in `fold`; only typed cells."""
    images = training_images(regime, fold, seed)
    train = [c for c in cells.mono] if uses_mono(regime) else []
    for name in images:
        train += [c for c in cells.annotated[name].cells if c.true_type is not None]
    return train, images


def test_keys(fold: Fold, cells: StudyCells) -> set[str]:
    """Crop keys of every cell of the fold's test images (annotated and as segmented)."""
    keys = set()
    for name in fold.test:
        for source in (cells.annotated.get(name), cells.test.get(name)):
            if source is not None:
                keys.update(c.key for c in source.cells)
    return keys


def check_no_leak(fold: Fold, regime: str, train: list[Cell], images: list[str], keys: set[str]) -> None:
    """No test image, and no crop with a test cell's pixels, in the training set; else one line (a bug or duplicated data)."""
    inside = sorted(set(images) & set(fold.test))
    leaked = {c.key for c in train} & keys
    if inside or leaked:
        raise UserError(f"fold {fold.index}, regime {regime}: {len(inside)} test image(s) and {len(leaked)} test crop(s) "
                        "(identical pixels) would reach the classifier; an image is in the data twice (mono and co, or "
                        "two co-culture names): remove the duplicate")


def check_folds(folds: list[Fold], regimes: list[str], cells: StudyCells, seed: int) -> None:
    """`check_no_leak` for every fold and regime, before anything is written."""
    for fold in folds:
        keys = test_keys(fold, cells)
        for regime in regimes:
            train, images = regime_training_cells(regime, fold, cells, seed)
            check_no_leak(fold, regime, train, images, keys)


def fit_predict(model: str, train: list[Cell], test: list[Cell], cache: M.FeatureCache, types: list[str], ph, seed: int) -> list[str]:
    """Predicted type names of `test` cells from a classifier fitted on `train` cells."""
    if not test:
        return []
    index = {t: i for i, t in enumerate(types)}
    x_train, y_train = cache.get([c.key for c in train]), np.asarray([index[c.true_type] for c in train])
    x_test = cache.get([c.key for c in test])
    if len(set(y_train.tolist())) == 1:  # one type to learn: every cell is that type
        return [types[int(y_train[0])]] * len(test)
    if model == M.REFERENCE:
        pred = M.fit_forest(x_train, y_train, ph.trees, seed).predict(x_test)
    else:
        pred = M.Head(x_train.shape[1], len(types), seed, ph.learning_rate).fit(x_train, y_train, ph.epochs, ph.batch_size).predict(x_test)
    return [types[int(i)] for i in pred]


def true_counts(data: PhenotypeData, cells: StudyCells) -> dict[str, np.ndarray]:
    """{co-culture image: (T,) true counts}: its annotated cells' types, or its points."""
    out = {}
    for im in data.co:
        if data.truth == POINTS:
            out[im.name] = counts([p.type for p in im.points or []], data.types)
        else:
            out[im.name] = counts([c.true_type for c in cells.annotated[im.name].cells], data.types)
    return out


def detection(data: PhenotypeData, cells: StudyCells, seg: str) -> dict[str, Match]:
    """{co-culture image: tp, fp, fn at IoU 0.5} when segmentation is predicted and true masks exist."""
    if seg != CLASSICAL:
        return {}
    return {im.name: matching(load_mask(im.mask), cells.test[im.name].labels) for im in data.co if im.mask is not None}


def score_fold(fold: Fold, preds: dict[str, list[str]], cells: StudyCells, truth: dict[str, np.ndarray], types: list[str],
               det: dict[str, Match]) -> tuple[dict, list[dict]]:
    """(metrics of the fold, one row per test image) from the predicted types of each test image's cells."""
    t_counts = np.stack([truth[n] for n in fold.test])
    p_counts = np.stack([counts(preds[n], types) for n in fold.test])
    metrics = count_metrics(t_counts, p_counts)
    true_types = [c.true_type for n in fold.test for c in cells.test[n].cells]
    pred_types = [p for n in fold.test for p in preds[n]]
    metrics.update(cell_metrics(true_types, pred_types, types))
    if det:
        m = sum((det[n] for n in fold.test if n in det), Match())
        metrics.update({"detection_f1": m.f1, "tp": m.tp, "fp": m.fp, "fn": m.fn})
    rows = [{"image": n, "true": truth[n].tolist(), "pred": counts(preds[n], types).tolist()} for n in fold.test]
    return metrics, rows


# --------------------------------------------------------------------------- the comparisons


def summarize(runs: list[dict], models: list[str], regimes: list[str]) -> dict:
    out = {}
    for model in models:
        for regime in regimes:
            rs = [r for r in runs if r["model"] == model and r["regime"] == regime]
            keys = METRICS + (["detection_f1"] if rs and "detection_f1" in rs[0]["metrics"] else [])
            out.setdefault(model, {})[regime] = {k: dict(zip(("mean", "std"), mean_std([r["metrics"][k] for r in rs]))) for k in keys}
    return out


def compare(runs: list[dict], models: list[str], regimes: list[str], folds: list[Fold], ph) -> list[dict]:
    """Every (model, regime) against (model, baseline) on the primary metric: one Holm family, verdicts.

    Differences are improvements (positive = better; for error metrics, baseline minus regime)."""
    by = {(r["model"], r["regime"], r["fold"]): r["metrics"][ph.primary] for r in runs}
    diffs = {}
    for model in models:
        for regime in regimes:
            if regime == ph.baseline:
                continue
            pairs = [(by[(model, regime, f.index)], by[(model, ph.baseline, f.index)]) for f in folds
                     if (model, regime, f.index) in by and (model, ph.baseline, f.index) in by]
            diffs[(model, regime)] = [improvement(ph.primary, a, b) for a, b in pairs
                                      if np.isfinite(a) and np.isfinite(b)]
    if not diffs:
        return []
    n_train = float(np.mean([len(f.train) for f in folds]))
    n_test = float(np.mean([len(f.test) for f in folds]))
    verdicts = decide_family({f"{m}|{r}": d for (m, r), d in diffs.items()}, n_train, n_test, delta=ph.delta, folds=ph.folds)
    return [{"model": m, "regime": r, "diffs": diffs[(m, r)], "verdict": dataclasses.asdict(verdicts[f"{m}|{r}"])} for m, r in diffs]


# --------------------------------------------------------------------------- the run


def _settings(ph) -> dict:
    return {k: v for k, v in dataclasses.asdict(ph).items() if k not in ("output", "overwrite")}


def _fold_runs(fold: Fold, models, regimes, cells: StudyCells, caches, data, truth, det, ph, keep: dict) -> tuple[list, list]:
    runs, rows = [], []
    keys = test_keys(fold, cells)
    test_cells = {n: cells.test[n].cells for n in fold.test}
    flat = [c for n in fold.test for c in test_cells[n]]
    for regime in regimes:
        train, images = regime_training_cells(regime, fold, cells, ph.seed)
        check_no_leak(fold, regime, train, images, keys)  # checked before any write too (`check_folds`); kept as a guard
        for model in models:
            start = time.perf_counter()
            pred = fit_predict(model, train, flat, caches[model], data.types, ph, ph.seed + fold.index)
            preds, i = {}, 0
            for n in fold.test:
                preds[n] = pred[i:i + len(test_cells[n])]
                i += len(test_cells[n])
            metrics, image_rows = score_fold(fold, preds, cells, truth, data.types, det)
            runs.append({"model": model, "regime": regime, "fold": fold.index, "repeat": fold.repeat, "metrics": metrics,
                         "n_train_cells": len(train), "train_images": images, "n_test_images": len(fold.test),
                         "n_test_cells": len(flat), "seconds": round(time.perf_counter() - start, 3)})
            rows += [{"model": model, "regime": regime, "fold": fold.index, "repeat": fold.repeat, **r} for r in image_rows]
            if fold.index == 0:
                keep[(model, regime)] = preds
    return runs, rows


def run_cv(data_section, ph, progress: bool = False) -> dict:
    """Run the whole cross-validation; returns the results (see module docstring). Writes only the feature cache."""
    data = read_data(data_section.data)
    models, regimes = check_settings(ph, data)
    out = check_output(ph, data_section)
    folds = make_folds([im.name for im in data.co], [im.group for im in data.co] if data.has_groups else None,
                       ph.folds, ph.repeats, ph.seed)
    check_k(folds, regimes)
    timings = {}
    start = time.perf_counter()
    cells = collect_cells(data, ph, progress)
    timings["cells_s"] = time.perf_counter() - start
    check_folds(folds, regimes, cells, ph.seed)
    fingerprint.claim(out, OUTPUT_NAMES, COMMAND)  # every input checked: OUT is ours from here
    start = time.perf_counter()
    caches = feature_caches(cells, models, ph, Path(ph.cache_dir) if ph.cache_dir else out / CACHE_DIR)
    timings["features_s"] = time.perf_counter() - start
    seg = segmentation_of(ph, data)
    truth, det = true_counts(data, cells), detection(data, cells, seg)
    runs, rows, keep = [], [], {}
    start = time.perf_counter()
    for fold in folds:
        r, i = _fold_runs(fold, models, regimes, cells, caches, data, truth, det, ph, keep)
        runs += r
        rows += i
    timings["fits_s"] = time.perf_counter() - start
    n_cells = len(cells.all_cells())
    timings["cells_per_second"] = n_cells / max(timings["cells_s"] + timings["features_s"], 1e-9)
    timings["seconds_per_regime"] = timings["fits_s"] / max(len(regimes), 1)
    return {
        "task": "phenotyping", "data": str(data.root), "types": data.types, "truth": data.truth, "segmentation": seg,
        "models": models, "regimes": regimes, "baseline": ph.baseline, "primary": ph.primary, "settings": _settings(ph),
        "n_mono_images": len(data.mono), "n_mono_cells": len(cells.mono), "n_co_images": len(data.co),
        "n_co_cells": sum(len(s.cells) for s in cells.test.values()), "n_cells": n_cells, "grouped": data.has_groups,
        "n_splits": ph.folds, "repeats": ph.repeats, "notes": data.notes, "timings": timings,
        "folds": [{"index": f.index, "repeat": f.repeat, "fold": f.fold, "train": list(f.train), "test": list(f.test)} for f in folds],
        "runs": runs, "images": rows, "summary": summarize(runs, models, regimes),
        "comparisons": compare(runs, models, regimes, folds, ph),
        "_overlay_predictions": keep, "_cells": cells,
    }
