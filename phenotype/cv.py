"""`phenotype cv`: the cross-validation protocol (`analysis.crossval`) with the phenotyping task.

The protocol owns the skeleton: the output folder, the folds (the one `prompts.splits.make_split`, over the
co-culture images, grouped by their group key), the regimes as mixes (`prompts.mixes.PHENOTYPING`), the jobs,
fingerprints with the reading rule, reuse or refusal of what OUT holds, claims, the run with its progress bar,
the summary, the paired comparison with the baseline regime, one Holm family and the verdicts. This module adds
only what phenotyping does differently:
1. its items: the co-culture images; every cell is cut once (`collect_cells`), and a regime's training set is
   cells: monoculture cells and the annotated cells of the fold's training images the regime names, drawn once
   per fold (`regimes.fold_seed`) so k = 1 lies inside k = 2; a test cell's crop (by key: SHA-256 of pixels and
   mask) or a test image in a training set is refused before anything is written;
2. its arms: the classifiers side by side (`reference`, `cnn`) on every job's same training cells, each cell's
   features computed once per classifier through the feature cache;
3. its metrics (`phenotype.metrics`; the count errors are lower-is-better, so a verdict's "helps" is a smaller
   error), its primary (`phenotype.primary`) and baseline (`phenotype.baseline`);
4. its results record, which `phenotype.report` renders (summary per classifier and regime, comparisons,
   per-image counts).

`run_cv(data_section, phenotype_section)` is the Python API: validated settings in, the results dictionary out,
`prompts.errors.UserError` for bad input. Nothing imports TensorFlow before the inputs are checked.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from analysis import crossval
from analysis.crossval import Inputs, Job
from analysis.matching import Match, matching
from prompts import fingerprint
from prompts.errors import UserError
from prompts.guard import check_outputs
from prompts.layout import REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUNS_DIR, SPLIT_FILE, count_of_fraction
from prompts.mixes import PHENOTYPING, REGIME_PLUS, Mix
from prompts.pairs import load_mask
from prompts.splits import Fold, make_split, read_split

from . import models as M
from .cells import CLASSICAL, GIVEN, PREDICTED, Cell, CellSet, predicted_cells, source_cells, truth_cells
from .data import POINTS, PhenotypeData, read_data
from .metrics import LOWER_IS_BETTER, METRICS, cell_metrics, count_metrics, counts
from .regimes import check_k, co_culture_dataset, fold_seed, regime_images, regime_names, training_images, uses_mono
from .synthetic import fold_tree, read_trees

log = logging.getLogger(__name__)
COMMAND = "phenotype cv"
OVERLAYS_DIR = "overlays"
CACHE_DIR = "cache"
CALIBRATION_CELLS = 256  # monoculture crops that calibrate the BatchNorm of `weights: calibrated`
OUTPUT_NAMES = (REPORT_MD, REPORT_HTML, RESULTS_CSV, RESULTS_JSON, OVERLAYS_DIR, CACHE_DIR, SPLIT_FILE, RUNS_DIR)
# settings that change no result (where it is written, and the report's pictures)
_RUN_FREE = frozenset({"output", "overwrite", "cache_dir", "overlays", "segmented"})  # segmented: the masks reach jobs as cells
# settings that reach one job only through its items and arm, or only the summary
_JOB_FREE = _RUN_FREE | {"regimes", "k", "baseline", "models", "primary", "delta", "folds", "repeats", "synthetic_fractions",
                         "synthetic", "crops"}


# --------------------------------------------------------------------------- settings


def check_settings(ph, data: PhenotypeData) -> tuple[list[str], list[str]]:
    """(models, regime names) of the section, checked against the data; one UserError line for the first problem."""
    models = list(dict.fromkeys(ph.models))
    unknown = [m for m in models if m not in M.MODELS]
    if unknown or not models:
        raise UserError(f"--models {' '.join(unknown) or '(none)'}: choose from {', '.join(M.MODELS)}")
    regimes = regime_names(ph.regimes, ph.k, ph.synthetic_fractions)
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


def fold_list(data_section, ph, data: PhenotypeData) -> list[Fold]:
    """The folds `phenotype cv` runs: data.split read over the co-culture images, else the one fold rule
    (`prompts.splits.make_split`, grouped by the group key when the data has one), as the protocol makes them."""
    dataset = co_culture_dataset(data.root, [im.name for im in data.co], [im.group for im in data.co] if data.has_groups else None)
    if data_section.split:
        return read_split(data_section.split, dataset).folds
    return make_split(dataset, ph.folds, ph.repeats, "group" if data.has_groups else None, ph.seed).folds


def synthetic_draw(base: list[Cell], pool: list[Cell], percent: float, types: list[str], rng) -> tuple[list[Cell], dict[str, int]]:
    """(generated cells to add, shortfall per type): per type, P % of the base regime's cells of that type
    (`prompts.layout.count_of_fraction`, the rounding of real+P), drawn without replacement from the tree's crops."""
    added, short = [], {}
    for t in types:
        want = count_of_fraction(sum(c.true_type == t for c in base), percent / 100)
        have = [c for c in pool if c.true_type == t]
        n = min(want, len(have))
        added += [have[i] for i in sorted(rng.choice(len(have), size=n, replace=False).tolist())] if n else []
        if want > n:
            short[t] = want - n
    return added, short


def training_images_needed(regime: str) -> bool:
    return not regime.startswith("zero-shot")


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
    """unet or stardist when asked (the segmenter's masks), else given, or classical when asked or when a co-culture
    image has no mask."""
    if ph.segmentation in PREDICTED:
        return ph.segmentation
    return CLASSICAL if ph.segmentation == CLASSICAL or any(im.mask is None for im in data.co) else GIVEN


def predicted_masks(data_section, ph, data: PhenotypeData, about: dict | None = None) -> dict[str, Path]:
    """{co-culture image: its predicted mask} from `phenotype.segmented` (ROOT/fold_<k>/masks/, `prompts.segmented`),
    each image's mask from the fold that tests it; checked before anything is written.

    Refuses (one UserError line): no `phenotype.segmented`; a fold's masks missing or not written by `segment predict`;
    a mask predicted from other bytes than the image's; a segmenter that trained on a test image or mask of its fold
    (by sha256: the leak rule); an image tested by two folds (repeats > 1: one mask per image). `about`, when given,
    receives the segmenter's settings and the training pairs per fold (the report's note).
    """
    from prompts.layout import fold_root
    from prompts.segmented import MASKS_DIR, RECORD, mask_path

    if not ph.segmented:
        raise UserError(f"phenotype.segmentation {ph.segmentation} needs phenotype.segmented: the folder of fold_<k>/masks/ "
                        "that `python -m phenotype pairs` + `python -m segment predict` write per fold (the workflow runs them)")
    co, out, h = {im.name: im for im in data.co}, {}, fingerprint.file_sha256
    for fold in fold_list(data_section, ph, data):
        folder = fold_root(ph.segmented, fold.index) / MASKS_DIR
        rec = fingerprint.read(folder / RECORD) if (folder / RECORD).is_file() else None
        if not rec or fingerprint.written_by(folder / RECORD) != fingerprint.mark("segment predict"):
            raise UserError(f"{folder / RECORD} is missing or was not written by `python -m segment predict`; segment fold "
                            f"{fold.index}'s test images with it (phenotype.segmented names the folder of fold_<k>/)")
        made_by = (rec.get("settings") or {}).get("model")
        if made_by != ph.segmentation:
            raise UserError(f"{folder / RECORD}: these masks were predicted by {made_by}, not by phenotype.segmentation "
                            f"{ph.segmentation}; segment fold {fold.index} again with `python -m segment predict --model {ph.segmentation}`")
        trained = {p.get(k) for p in rec.get("train", []) for k in ("image_sha256", "mask_sha256")}
        predicted = {t.get("name"): t.get("image_sha256") for t in rec.get("test", [])}
        for name in fold.test:
            im = co[name]
            if name in out:
                raise UserError(f"{name} is a test image of two folds (phenotype.repeats {ph.repeats} or data.split): predicted "
                                "segmentation keeps one mask per image; use phenotype.repeats 1")
            own = {h(im.image), *([h(im.mask)] if im.mask is not None else [])}
            if own & trained:
                raise UserError(f"{folder / RECORD}: the segmenter of fold {fold.index} trained on {name}, a test image of "
                                "that fold; segment it again from `python -m phenotype pairs` lists")
            if predicted.get(name) != h(im.image) or not mask_path(folder, name).is_file():
                raise UserError(f"{folder}: no predicted mask of {name} as it is now (missing or made from other bytes); "
                                "segment the fold again (`python -m segment predict`)")
            out[name] = mask_path(folder, name)
        if about is not None:
            about.update({k: rec["settings"].get(k) for k in ("model", "weights", "epochs", "image_size")})
            about.setdefault("folds", {})[str(fold.index)] = {"train_pairs": len(rec.get("train", [])),
                                                              "loss": (rec.get("losses") or [None])[-1]}
    return out


def collect_cells(data: PhenotypeData, ph, reading, progress: bool = False, predicted: dict[str, Path] | None = None) -> StudyCells:
    """Cut every cell once (see `phenotype.cells`), each image read under `reading` (the data section's rule).

    With predicted segmentation (unet, stardist) the test cells of each co-culture image come from its mask in
    `predicted` ({image: predicted mask}, `predicted_masks`); without it only the training cells are cut.
    """
    seg = segmentation_of(ph, data)
    images = data.mono + data.co
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="cells", unit="img", leave=False)
    mono, annotated, test = [], {}, {}
    for im in images:
        if im.is_mono:
            mono += source_cells(im, ph.crop_size, seg, ph.min_size, ph.min_distance, reading).cells
            continue
        if data.truth != POINTS:
            annotated[im.name] = truth_cells(im, ph.crop_size, reading)
        if seg in PREDICTED:
            if predicted is not None:
                test[im.name] = predicted_cells(im, load_mask(predicted[im.name]), ph.crop_size, reading)
            continue
        test[im.name] = annotated[im.name] if seg == GIVEN and im.name in annotated else \
            source_cells(im, ph.crop_size, seg, ph.min_size, ph.min_distance, reading)
    return StudyCells(mono, annotated, test)


def reference_features(cells: list[Cell], cache: M.FeatureCache) -> None:
    missing = set(cache.missing(c.key for c in cells))
    todo = {c.key: c for c in cells if c.key in missing}
    if todo:
        cache.add(list(todo), np.stack([M.reference_features(c.pixels, c.mask) for c in todo.values()]))


def cnn_features(cells: list[Cell], mono: list[Cell], ph, cache_dir: Path, seed: int, cache: M.FeatureCache | None = None) -> M.FeatureCache:
    """The cnn's features of every cell, through its cache (the base is built only when a crop is missing)."""
    weights = M.check_weights(ph.weights)
    mono = mono[:CALIBRATION_CELLS]  # one forward pass calibrates BatchNorm: a bounded batch
    extractor = M.cnn_id(ph.backbone, weights, ph.cnn_size, ph.mask_channel, seed, [c.key for c in mono])
    cache = cache if cache is not None else M.FeatureCache(cache_dir, extractor)
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


def feature_caches(cells: StudyCells, models: list[str], ph, cache_dir: Path, extra: list[Cell] = (),
                   extra_dir: Path | None = None) -> dict[str, M.FeatureCache]:
    """Each classifier's features of every cell of the study, through the cache in `cache_dir`, and of the `extra`
    (generated) cells through a cache of their own in `extra_dir` when it is another folder: a study's shared cache
    of real cells (inside the baseline regime's sealed folder) is then never written by a +synthetic job."""
    separate = bool(extra) and extra_dir is not None and Path(extra_dir).resolve() != Path(cache_dir).resolve()
    everything = cells.all_cells() + ([] if separate else list(extra))
    caches = {}
    for model in models:
        caches[model] = _fill(model, everything, cells, ph, M.FeatureCache(cache_dir, _extractor_id(model, cells, ph)))
        caches[model].save()
        if separate:  # the generated cells' features: their own file, merged in memory only
            own = _fill(model, list(extra), cells, ph, M.FeatureCache(extra_dir, _extractor_id(model, cells, ph)))
            own.save()
            caches[model].features.update(own.features)
    return caches


def _extractor_id(model: str, cells: StudyCells, ph) -> str:
    if model == M.REFERENCE:
        return M.reference_id()
    mono = [c.key for c in cells.mono[:CALIBRATION_CELLS]]
    return M.cnn_id(ph.backbone, M.check_weights(ph.weights), ph.cnn_size, ph.mask_channel, ph.seed, mono)


def _fill(model: str, todo: list[Cell], cells: StudyCells, ph, cache: M.FeatureCache) -> M.FeatureCache:
    if model == M.REFERENCE:
        reference_features(todo, cache)
        return cache
    return cnn_features(todo, cells.mono, ph, cache.path.parent, ph.seed, cache)


# --------------------------------------------------------------------------- one fold


def regime_training_cells(regime: str, fold: Fold, cells: StudyCells, seed: int) -> tuple[list[Cell], list[str]]:
    """(training cells, co-culture images they come from) of `regime` in `fold`; only typed cells."""
    images = training_images(regime, fold, seed)
    return regime_cells(regime, images, cells), images


def regime_cells(regime: str, images: list[str], cells: StudyCells) -> list[Cell]:
    """A regime's training cells: the monoculture cells (unless co-only), then the typed cells of `images`."""
    train = list(cells.mono) if uses_mono(regime) else []
    for name in images:
        train += [c for c in cells.annotated[name].cells if c.true_type is not None]
    return train


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
    if seg == GIVEN:
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
        metrics.update({"detection_f1": m.f1, "tp": m.tp, "fp": m.fp, "fn": m.fn,
                        **count_error_split(m, true_types, pred_types)})
    rows = [{"image": n, "true": truth[n].tolist(), "pred": counts(preds[n], types).tolist()} for n in fold.test]
    return metrics, rows


def count_error_split(m: Match, true_types: list, pred_types: list[str]) -> dict:
    """Where a count with predicted segmentation goes wrong: true cells the segmenter missed, predicted cells that match
    no true cell, and matched cells given the wrong type.

    Parameters
    ----------
    m : Match
        tp, fp, fn at IoU 0.5 summed over the fold's test images.
    true_types, pred_types : list
        Per predicted cell: the type of the true cell it matches (None: a false detection), and its predicted type.

    Returns
    -------
    dict
        missed (fn), false_cells (fp), wrong_type (matched cells typed wrong), and the fractions missed / true cells
        and wrong_type / matched cells.
    """
    wrong = sum(1 for t, p in zip(true_types, pred_types) if t is not None and p != t)
    matched = sum(1 for t in true_types if t is not None)
    return {"missed": m.fn, "false_cells": m.fp, "wrong_type": wrong,
            "missed_fraction": m.fn / max(m.tp + m.fn, 1), "wrong_type_fraction": wrong / max(matched, 1)}


# --------------------------------------------------------------------------- the task


@dataclasses.dataclass
class ProtocolSettings:
    """The phenotype section as the protocol reads it: the expanded regimes are its mixes, the co-culture
    images' group key (when any image has one) its `group_by`."""

    output: str
    overwrite: bool
    folds: int
    repeats: int
    seed: int
    delta: float
    mixes: list[str] = dataclasses.field(default_factory=list)
    group_by: str | None = None


class RegimeCells(list):
    """A regime's training cells in one fold (a list of `Cell`), with the co-culture images they come from."""

    def __init__(self, cells: list[Cell], images: list[str], n_synthetic: int = 0):
        super().__init__(cells)
        self.images = images
        self.n_synthetic = n_synthetic

    def generated(self) -> list[Cell]:
        """The generated cells of a `<regime>+P` training set (they come last)."""
        return list(self[len(self) - self.n_synthetic:]) if self.n_synthetic else []


class PhenotypeTask(crossval.Task):
    """Phenotyping's part of the protocol: co-culture images, cells, classifiers side by side, count errors."""

    command, section_name, run_name = COMMAND, "phenotype", "phenotyping CV run"
    noun = "cells"
    generator = "python -m phenotype crops, lora train, generate (the workflow runs them)"
    unchecked_warning = ("%d synthetic tree(s) cannot be traced to their fold's training images (no record of the crops their "
                         "LoRAs saw, or no phenotype.crops), e.g. %s: cannot check that no test image's cell reached their LoRAs")
    output_names = OUTPUT_NAMES
    vocabulary = PHENOTYPING
    lower_is_better = frozenset(LOWER_IS_BETTER)
    vs_real_fields = ("diff_mean", "diff_std", "t", "p", "j")
    keys_read_pixels = False  # the protocol adds the reading rule to every job's fingerprint

    def __init__(self, data, ph, progress: bool = False):
        super().__init__(data, ProtocolSettings(ph.output, ph.overwrite, ph.folds, ph.repeats, ph.seed, ph.delta), progress)
        self.ph = ph
        self.primary, self.baseline = ph.primary, ph.baseline
        self.pheno: PhenotypeData | None = None
        self.cells: StudyCells | None = None
        self.caches: dict[str, M.FeatureCache] | None = None
        self.truth: dict[str, np.ndarray] = {}
        self.det: dict[str, Match] = {}
        self.timings: dict[str, float] = {}
        self._test_keys: dict[int, set[str]] = {}
        self.synthetic_cells: dict[str, Cell] = {}  # key -> every generated cell a job may train on
        self.tree_names: list[str] = []
        self.syn = None  # phenotype.synthetic.CropTrees when a <regime>+P regime runs
        self.predicted: dict[str, Path] | None = None  # {co-culture image: predicted mask} (segmentation unet, stardist)
        self.segmenter: dict = {}  # what trained each fold's segmenter (its records), for the report

    # -- items

    def read_items(self):
        data = read_data(self.data.data)
        models, regimes = check_settings(self.ph, data)
        check_outputs(self.ph.output, OUTPUT_NAMES)
        self.pheno, self.arms, self.section.mixes = data, tuple(models), regimes
        self.section.group_by = "group" if data.has_groups else None
        seg = segmentation_of(self.ph, data)
        if seg in PREDICTED:  # checked (leaks included) before anything is written
            self.predicted = predicted_masks(self.data, self.ph, data, self.segmenter)
        detects = seg != GIVEN and any(im.mask is not None for im in data.co)
        self.metrics = (*METRICS, *(("detection_f1",) if detects else ()))
        return co_culture_dataset(data.root, [im.name for im in data.co], [im.group for im in data.co] if data.has_groups else None)

    def read_synthetic(self, mixes: list[Mix]):
        """The generated crops' trees when a `<regime>+P` regime runs and `phenotype.synthetic` names them."""
        if not self.ph.synthetic or not any(m.uses_synthetic for m in mixes):
            return None
        self.syn = read_trees(self.ph.synthetic, self.pheno.types)
        self.tree_names = self.syn.names
        return self.syn

    def tree_items(self, fold: Fold, name: str):
        """The fold's tree of generated crops as cells, checked: its LoRAs saw crops of the fold's training images only."""
        cells = self.study_cells()
        channels = next((c.pixels.shape[2] for c in cells.all_cells()), 1)
        tree = fold_tree(self.syn, fold, name, self.ph.crops, {im.name: im.image for im in self.pheno.co},
                         self.ph.crop_size, channels)
        for c in tree.items:
            self.synthetic_cells.setdefault(c.key, c)
        return tree

    def row_name(self, mix: Mix, tree: str) -> str:
        """A regime's name in the results: its mix name, with the tree when several trees (LoRA weights) run."""
        return f"{mix.name} {tree}" if mix.uses_synthetic and len(self.tree_names) > 1 else mix.name

    def check_split(self, split) -> None:
        check_k(split.folds, self.section.mixes)

    def regime_rows(self, inputs: Inputs) -> list[str]:
        """Every regime's row name in order: the regimes without synthetic crops, then each `<regime>+P` per tree."""
        trees = self.tree_names or [crossval.REAL_TREE]
        return [self.row_name(m, t) for m in inputs.mixes for t in (trees if m.uses_synthetic else [crossval.REAL_TREE])]

    def study_cells(self) -> StudyCells:
        """Every cell of the study, cut once (timed), with the true counts and detection they give."""
        if self.cells is None:
            start = time.perf_counter()
            self.cells = collect_cells(self.pheno, self.ph, self.reading, self.progress, self.predicted)
            self.timings["cells_s"] = time.perf_counter() - start
            self.truth = true_counts(self.pheno, self.cells)
            self.det = detection(self.pheno, self.cells, segmentation_of(self.ph, self.pheno))
        return self.cells

    def fold_items(self, fold: Fold) -> tuple[list[str], list[str]]:
        self.study_cells()
        return list(fold.train), list(fold.test)

    def job_seed(self, fold: Fold, mix: Mix, tree: str) -> list[int]:
        return fold_seed(self.ph.seed, fold)

    def training_set(self, mix: Mix, real: list[str], synthetic, rng) -> tuple[RegimeCells, int | dict]:
        """The regime's cells; a `<regime>+P` regime adds generated crops per type to its base regime's cells."""
        images = regime_images(mix, real, rng)
        base = regime_cells(mix.name, images, self.study_cells())
        if mix.kind != REGIME_PLUS:
            return RegimeCells(base, images), 0
        added, short = synthetic_draw(base, list(synthetic), mix.percent, self.pheno.types, rng)
        return RegimeCells(base + added, images, len(added)), short

    def fold_test_keys(self, fold: Fold) -> set[str]:
        if fold.index not in self._test_keys:
            self._test_keys[fold.index] = test_keys(fold, self.study_cells())
        return self._test_keys[fold.index]

    def check_no_leak(self, job: Job) -> None:
        check_no_leak(job.fold, self.row_name(job.mix, job.tree), job.train, job.train.images, self.fold_test_keys(job.fold))

    # -- training

    def start(self, inputs: Inputs, jobs: list[Job]) -> None:
        if M.CNN in self.arms:
            from analysis.keras import import_keras

            import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines

    def extractor(self, model: str) -> str:
        """The identity of a classifier's features (its cache file)."""
        return _extractor_id(model, self.study_cells(), self.ph)

    def fingerprint_parts(self, inputs: Inputs, jobs: list[Job]) -> dict:
        """Settings, classifiers, every cell (crop key, true type), the true counts, the folds (the protocol adds the reading)."""
        cells = self.study_cells()
        settings = {k: v for k, v in fingerprint.settings_part(self.ph).items() if k not in _RUN_FREE}
        data = {"cells": sorted((c.key, c.true_type or "") for c in cells.all_cells()),
                "truth": {n: t.tolist() for n, t in sorted(self.truth.items())}, "types": self.pheno.types}
        parts = {**{f"settings.{k}": v for k, v in settings.items()}, "models": {m: self.extractor(m) for m in self.arms},
                 "data": fingerprint.digest(data), "split": [[f.repeat, f.fold, list(f.train), list(f.test)] for f in inputs.split.folds]}
        if self.syn is not None:  # the generated crops every +P job draws from, per tree
            parts["synthetic"] = fingerprint.digest({str(Path(j.synthetic_root).relative_to(self.syn.root)): sorted(c.key for c in j.train.generated())
                                                     for j in jobs if j.synthetic_root})
        return parts

    def job_fingerprint(self, job: Job) -> str:
        settings = {k: v for k, v in fingerprint.settings_part(self.ph).items() if k not in _JOB_FREE}
        cells = self.study_cells()
        return fingerprint.digest({
            "settings": settings, "model": self.extractor(job.arm), "regime": job.mix.name, "fold": job.fold.index,
            **({"tree": job.tree} if job.mix.uses_synthetic else {}),
            "train": [(c.key, c.true_type) for c in job.train], "types": self.pheno.types,
            "test": [(n, [c.key for c in cells.test[n].cells], self.truth[n].tolist()) for n in job.test],
            "test_keys": sorted(self.fold_test_keys(job.fold)),
            "detection": {n: dataclasses.astuple(self.det[n]) for n in job.test if n in self.det},
        })

    def features(self) -> dict[str, M.FeatureCache]:
        """Every cell's features per classifier, through the cache (after the claim: the cache may live in OUT)."""
        if self.caches is None:
            start = time.perf_counter()
            ph = self.ph
            own = Path(ph.output) / CACHE_DIR
            self.caches = feature_caches(self.study_cells(), list(self.arms), ph, Path(ph.cache_dir) if ph.cache_dir else own,
                                         list(self.synthetic_cells.values()), own)
            self.timings["features_s"] = time.perf_counter() - start
        return self.caches

    def train_and_score(self, job: Job) -> dict:
        """Fit the job's classifier on its regime's cells, type the fold's test cells, count them per image."""
        caches, cells, ph = self.features(), self.study_cells(), self.ph
        test_cells = {n: cells.test[n].cells for n in job.test}
        flat = [c for n in job.test for c in test_cells[n]]
        start = time.perf_counter()
        pred = fit_predict(job.arm, list(job.train), flat, caches[job.arm], self.pheno.types, ph, ph.seed + job.fold.index)
        preds, i = {}, 0
        for n in job.test:
            preds[n] = pred[i:i + len(test_cells[n])]
            i += len(test_cells[n])
        metrics, image_rows = score_fold(job.fold, preds, cells, self.truth, self.pheno.types, self.det)
        seconds = round(time.perf_counter() - start, 3)
        self.timings["fits_s"] = self.timings.get("fits_s", 0.0) + seconds
        return {"model": job.arm, "regime": self.row_name(job.mix, job.tree), "fold": job.fold.index, "repeat": job.fold.repeat,
                "metrics": metrics, "n_train_cells": len(job.train), "n_synthetic_cells": job.train.n_synthetic,
                "train_images": list(job.train.images),
                "n_test_images": len(job.test), "n_test_cells": len(flat), "seconds": seconds,
                "arm": job.arm, "mix": job.mix.name, "tree": job.tree, "leaky": job.leaky, "fingerprint": job.fingerprint,
                "synthetic_tree": job.synthetic_root, "synthetic_fraction": job.train.n_synthetic / max(1, len(job.train)),
                "shortfall": job.shortfall, "images": image_rows,
                "predictions": preds if job.fold.index == 0 else None}

    # -- summary

    def results(self, inputs: Inputs, common: dict, tables: dict, runs: list[dict]) -> dict:
        """The results record `phenotype.report` renders; verdicts against the baseline, one Holm family."""
        ph, data, cells = self.ph, self.pheno, self.study_cells()
        crossval.holm_verdicts(tables, ph.primary, common["n_train_mean"], common["n_test_mean"], common["n_splits"], ph.delta,
                               baseline=ph.baseline, lower_is_better=ph.primary in self.lower_is_better)
        models, regimes = list(self.arms), self.regime_rows(inputs)
        order = {(m, r): i for i, (m, r) in enumerate((m, r) for r in regimes for m in models)}
        runs = sorted(runs, key=lambda r: (r["fold"], order[(r["model"], r["regime"])]))
        images = [{"model": r["model"], "regime": r["regime"], "fold": r["fold"], "repeat": r["repeat"], **row}
                  for r in runs for row in r["images"]]
        keep = {(r["model"], r["regime"]): r["predictions"] for r in runs if r.get("predictions") is not None}
        public = [{k: v for k, v in r.items() if k not in ("images", "predictions")} for r in runs]
        rows = {m: {self.row_name(Mix(r["mix"], REGIME_PLUS if r["uses_synthetic"] else r["mix"]), r["tree"]): r
                    for t in (self.tree_names or [crossval.REAL_TREE]) for r in tables[crossval.table_name(m, t)]}
                for m in models}
        n_cells = len(cells.all_cells())
        timings = {"cells_s": self.timings.get("cells_s", 0.0), "features_s": self.timings.get("features_s", 0.0),
                   "fits_s": self.timings.get("fits_s", 0.0)}
        timings["cells_per_second"] = n_cells / max(timings["cells_s"] + timings["features_s"], 1e-9)
        timings["seconds_per_regime"] = timings["fits_s"] / max(len(regimes), 1)
        return {
            "task": "phenotyping", "data": str(data.root), "types": data.types, "truth": data.truth,
            "segmentation": segmentation_of(ph, data), "segmenter": self.segmenter or None, "models": models, "regimes": regimes, "baseline": ph.baseline,
            "primary": ph.primary, "settings": _settings(ph), "n_mono_images": len(data.mono), "n_mono_cells": len(cells.mono),
            "n_co_images": len(data.co), "n_co_cells": sum(len(s.cells) for s in cells.test.values()), "n_cells": n_cells,
            "synthetic": common["synthetic"], "synthetic_per_fold": common["synthetic_per_fold"],
            "crops": ph.crops, "synthetic_trees": list(self.tree_names),
            "grouped": data.has_groups, "n_splits": common["n_splits"], "repeats": common["repeats"], "notes": data.notes,
            "timings": timings,
            "folds": [{"index": f.index, "repeat": f.repeat, "fold": f.fold, "train": list(f.train), "test": list(f.test)}
                      for f in inputs.split.folds],
            "runs": public, "images": images, "summary": summary(rows, self.metrics),
            "comparisons": comparisons(rows, ph.baseline, ph.primary, ph.primary in self.lower_is_better),
            "reading": common["reading"], "_overlay_predictions": keep, "_cells": cells,
        }


def summary(rows: dict[str, dict[str, dict]], metrics: tuple[str, ...]) -> dict:
    """{classifier: {regime: {metric: {mean, std}}}} from the protocol's rows."""
    return {m: {regime: {k: {"mean": row["metrics"][k]["mean"], "std": row["metrics"][k]["std"]} for k in metrics}
                for regime, row in by.items()} for m, by in rows.items()}


def comparisons(rows: dict[str, dict[str, dict]], baseline: str, primary: str, lower_is_better: bool) -> list[dict]:
    """Every (classifier, regime) against (classifier, baseline): per-fold improvements (positive = better) and the verdict."""
    out = []
    for model, by in rows.items():
        base = by.get(baseline)
        for regime, row in by.items():
            if base is not None and regime != baseline and "verdict" in row:
                out.append({"model": model, "regime": regime, "diffs": crossval.improvements(row, base, primary, lower_is_better),
                            "verdict": row["verdict"]})
    return out


def _settings(ph) -> dict:
    return {k: v for k, v in dataclasses.asdict(ph).items() if k not in ("output", "overwrite")}


def run_cv(data_section, ph, progress: bool = False) -> dict:
    """Run (or resume) the whole cross-validation; returns the results (see `PhenotypeTask.results`).

    Each job's result is saved in OUT/runs/<classifier>/real/<regime>/fold_<k>.json and reused while its inputs
    (the reading rule included) are unchanged; other inputs in the same OUT are refused unless --overwrite.
    """
    return crossval.run(PhenotypeTask(data_section, ph, progress))
