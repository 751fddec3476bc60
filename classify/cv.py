"""`classify cv`: the cross-validation protocol (`analysis.crossval`) with the classification task.

The protocol owns the skeleton (output folder, split, mixes, jobs, fingerprints, reuse, claims, the run,
the paired comparison with `real`); this module adds only what classification does differently:
1. its items: the images of the data folder with their classes, keyed by their decoded pixels, the
   minority class subsampled when asked; synthetic images per class from `generate`'s trees, leak-checked
   against the fold's test images and against what each tree's LoRAs were trained on;
2. `train_and_score`: a frozen EfficientNet base and a small head, on cached features or end to end
   on pixels (`Runner`);
3. its metrics (`analysis.stats.METRICS`, macro F1 the primary), its mixes (the classification
   vocabulary, with the baselines oversample, classweight, noaug), its results record: confusion and
   per-class scores per row, verdicts in two Holm families and flags (`classify.results.annotate`).

Nothing imports TensorFlow before the inputs are checked, so a bad input is one line on stderr.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from analysis import crossval, stats
from analysis.crossval import FoldTree, Inputs, Job
from prompts import fingerprint
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, FOLDS_CSV, REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUNS_DIR, SPLIT_FILE
from prompts.mixes import CLASSIFICATION, Mix
from prompts.splits import Fold, Split

from .features import PLAIN, Extractor, FeatureCache, ImageTable, aug_views, compute_features, default_cache_dir, image_key
from .mixes import Item, build_training_set, counts, subsample_minority
from .results import PRIMARY, annotate
from .synthetic import SyntheticSet, check_provenance, read_synthetic

log = logging.getLogger(__name__)

WEIGHTS_NONE_WARNING = (
    "classify.weights is none: the EfficientNet base has random weights, its features carry (almost) nothing, "
    "and every accuracy, F1 and p-value of this run is meaningless (a smoke test); use --weights imagenet or a weights file"
)
# what `classify cv` writes into OUT (besides fingerprint.json)
_OUTPUT_NAMES = (REPORT_MD, REPORT_HTML, RESULTS_CSV, RESULTS_JSON, SPLIT_FILE, FOLDS_CSV, RUNS_DIR)
OUTPUT_NAMES = (*_OUTPUT_NAMES, FINGERPRINT_FILE)  # claimed in OUT before the first write (prompts.guard's rule)
# settings that reach a job only through its training and test items (or not at all)
_JOB_FREE = frozenset({"mixes", "folds", "repeats", "group_by", "minority_fraction", "minority_class", "weights", "delta"})
# settings that change the report only (verdicts): a new value re-writes the report and reuses every run
REPORT_ONLY = frozenset({"delta"})


def run_cv(data_section, cls, progress: bool = True) -> dict:
    """Run (or resume) the classification CV and return the results dictionary (each run also in OUT/runs).

    data_section: `prompts.schema.DataSection`; cls: `prompts.schema.ClassifySection`. Raises UserError before
    anything is written when an input is bad.
    """
    from .model import check_backbone, normalize_weights

    check_backbone(cls.backbone)
    normalize_weights(cls.weights)
    return crossval.run(ClassifyTask(data_section, cls, progress))


class ClassifyTask(crossval.Task):
    """Classification's part of the protocol: images with classes, the EfficientNet classifier, macro F1."""

    command, section_name, run_name = "classify cv", "classify", "CV run"
    noun, generator = "images", "python -m generate"
    output_names = _OUTPUT_NAMES
    metrics, primary, vocabulary = stats.METRICS, PRIMARY, CLASSIFICATION
    vs_real_fields = ("diff_mean", "diff_std", "t", "p", "min_significant_diff")
    bulky = ("probs", "test", "y_true", "y_pred", "losses")
    keys_read_pixels = True  # image_key hashes the pixels as decoded under the reading rule
    unchecked_warning = (f"%d synthetic tree(s) have no record of the images their LoRAs were trained on (images in "
                         f"{FINGERPRINT_FILE}), e.g. %s: cannot check that they never saw their fold's test images; trees "
                         "written by `python -m generate` with LoRAs from `lora train` have it")

    def __init__(self, data, cls, progress: bool = True, dataset: Dataset | None = None, syn: SyntheticSet | None = None):
        super().__init__(data, cls, progress)
        self.dataset, self.syn = dataset, syn
        self.runner: Runner | None = None
        self._labels: dict[str, str] | None = None

    # -- items

    def read_items(self) -> Dataset:
        self.dataset = read_dataset(self.data.data, skip_bad_images=self.data.skip_bad_images, reading=self.reading)
        return self.dataset

    def read_synthetic(self, mixes: list[Mix]) -> SyntheticSet | None:
        cls = self.section
        self.syn = read_synthetic(cls.synthetic, self.dataset.classes) if cls.synthetic else None
        return self.syn

    def _item(self, path: str) -> Item:
        """A real image of the data folder; its key hashes its decoded pixels (memoised per path, size, mtime)."""
        if self._labels is None:
            self._labels = {r.path: r.label for r in self.dataset.records}
        full = self.dataset.root / path
        return Item(full, self._labels[path], image_key(full, self.reading))

    def fold_items(self, fold: Fold) -> tuple[list[Item], list[Item]]:
        cls = self.section
        real = [self._item(p) for p in fold.train]
        test = [self._item(p) for p in fold.test]
        if cls.minority_fraction is not None:
            real = subsample_minority(real, cls.minority_fraction, cls.minority_class, np.random.default_rng([cls.seed, fold.index, 7]))
        return real, test

    def tree_items(self, fold: Fold, name: str) -> FoldTree:
        """The fold's own tree is checked against the fold's test images by what its LoRAs were trained on."""
        ds, leaky = self.syn.tree(fold.index, name)
        test_hashes = {p: fingerprint.file_sha256(self.dataset.root / p) for p in fold.test}  # as `lora train` records them
        checked = leaky or check_provenance(fold.index, ds.root, test_hashes)
        items = [Item(ds.root / r.path, r.label, image_key(ds.root / r.path, self.reading), "synthetic") for r in ds.records]
        return FoldTree(items, leaky, ds.root, checked)

    def training_set(self, mix: Mix, real, synthetic, rng):
        return build_training_set(mix, real, synthetic, self.dataset.classes, rng)

    def check_no_leak(self, job: Job) -> None:
        check_no_leak(job)

    # -- training

    def start(self, inputs: Inputs, jobs: list[Job]) -> None:
        from analysis.keras import import_keras

        from .model import normalize_weights

        if normalize_weights(self.section.weights) is None:  # after the input checks: a bad input stays one line
            log.warning(WEIGHTS_NONE_WARNING)
        keras = import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
        keras.utils.set_random_seed(self.section.seed)
        self.runner = Runner(jobs, self.dataset.classes, self.section, self.reading, self.progress)

    def fingerprint_parts(self, inputs: Inputs, jobs: list[Job]) -> dict:
        return run_fingerprint(inputs.dataset, inputs.split, inputs.synthetic, jobs, self.runner, self.section)

    def job_fingerprint(self, job: Job) -> str:
        return self.runner.fingerprint(job)

    def prepare(self, todo: list[Job]) -> None:
        if todo:
            self.runner.prepare(todo)  # builds the base when features are missing: a bad weights file stops here

    def train_and_score(self, job: Job) -> dict:
        return self.runner.run(job)

    def timing(self) -> dict:
        return {"seconds_features_or_pixels": round(self.runner.seconds_features, 2)}

    # -- summary

    def row_fields(self, runs: list[dict]) -> dict:
        """The confusion matrix summed over folds and each class's precision, recall and F1 (mean over folds)."""
        if not runs:
            return {"confusion": [], "per_class": {}}
        return {
            "confusion": np.sum([r["metrics"]["confusion"] for r in runs], axis=0).tolist(),
            "per_class": {c: {m: stats.mean_std([r["metrics"]["per_class"][c][m] for r in runs])[0]
                              for m in ("precision", "recall", "f1")} for c in self.dataset.classes},
        }

    def results(self, inputs: Inputs, common: dict, tables: dict, runs: list[dict]) -> dict:
        """The results record with the classes, each row's verdict and flags and the study's flags (`annotate`)."""
        before = ("data", "split", "group_by", "synthetic", "synthetic_per_fold")
        return annotate({
            "version": 1,
            **{k: common[k] for k in before},
            "classes": inputs.dataset.classes,
            "class_counts": inputs.dataset.class_counts(),
            **{k: v for k, v in common.items() if k not in before},
            "wilcoxon_min_p": stats.wilcoxon_floor(common["n_folds"]),
            "settings": dataclasses.asdict(self.section),
            "tables": tables,
            "runs": runs,
        })


def plan_jobs(dataset: Dataset, split: Split, mixes: list[Mix], syn: SyntheticSet | None, cls, reading) -> list[Job]:
    """Every (tree, mix, fold) job of a classification CV, leak-checked (`analysis.crossval.plan_jobs`); items keyed
    by their pixels as read under `reading` (`prompts.normalize.Reading`)."""
    task = ClassifyTask(None, cls, dataset=dataset, syn=syn)
    task.reading = reading  # no data section here: the rule is given
    return crossval.plan_jobs(task, Inputs(dataset, split, mixes, syn))


def summarize(results: list[dict], dataset: Dataset, split: Split, mixes: list[Mix], syn, cls, reading) -> dict:
    """The results record of finished runs (`analysis.crossval.summarize` with the classification task); reading: the
    rule the runs' images were read with (`prompts.normalize.Reading`), recorded as the record's "reading"."""
    task = ClassifyTask(None, cls, dataset=dataset, syn=syn)
    task.reading = reading  # no data section here: the rule is given
    return crossval.summarize(task, Inputs(dataset, split, mixes, syn), results)


def check_no_leak(job: Job) -> None:
    """No synthetic image may be a test image of its fold (same file or same content)."""
    test_paths = {it.path.resolve() for it in job.test}
    test_keys = {it.key: it.path for it in job.test}
    for it in job.train:
        if it.source == "synthetic" and (it.path.resolve() in test_paths or it.key in test_keys):
            raise UserError(
                f"synthetic image {it.path} is test image {test_keys.get(it.key, it.path)} of {job.fold.name}: "
                "synthetic images must never enter a test fold; remove it from the synthetic folder"
            )


# ---------------------------------------------------------------- training


class Runner:
    """Trains and tests jobs on cached features or, with feature_cache off, end to end on pixels."""

    def __init__(self, jobs: list[Job], classes: list[str], cls, reading, progress: bool = True):
        from .model import build_base, model_key

        self.cls, self.classes, self.progress = cls, classes, progress
        self.table = ImageTable.from_paths(sorted({it.path for j in jobs for it in (*j.train, *j.test)}), reading)
        self.row = self.table.row()
        self.base_seed = cls.seed
        self._make_base = lambda: build_base(cls.backbone, cls.weights, cls.image_size, seed=self.base_seed)
        self.key = model_key(cls.backbone, cls.weights, cls.image_size, self.base_seed)
        self.views = aug_views(cls.views or cls.epochs, cls.seed) if cls.augment else []
        self.feats: dict[str, np.ndarray] | None = None
        self.pixels: np.ndarray | None = None
        self._base = None
        self._models: dict = {}
        self.seconds_features = 0.0

    @property
    def base(self):
        if self._base is None:
            self._base = self._make_base()
        return self._base

    def prepare(self, jobs: list[Job]) -> None:
        """Features of every image and view (cached path) or decoded pixels (naive path)."""
        t0 = time.perf_counter()
        if self.cls.feature_cache:
            needs_aug = any(not j.mix.augment_off for j in jobs) and self.cls.augment
            views = [PLAIN] + (self.views if needs_aug else [])
            cache = FeatureCache(self.cls.cache_dir or default_cache_dir(), self.key)
            extractor = Extractor(lambda: self.base, self.cls.image_size, self.cls.batch_size, self.cls.seed)
            self.feats = compute_features(self.table, views, cache, extractor, self.progress)
        else:
            from .pixels import load_pixels

            self.base  # noqa: B018 - built before anything is written, so a bad weights file writes nothing
            self.pixels = load_pixels(self.table.paths, self.cls.image_size, self.table.reading, self.progress)
        self.seconds_features = time.perf_counter() - t0

    def fingerprint(self, job: Job) -> str:
        """Identity of a job's inputs and settings: a saved result is reused only when it matches.

        The result-changing settings (the split's and the mixes' settings enter through the
        items), the frozen base (`model_key`: backbone, weights file hash, size, Keras), the
        mix and the exact training and test images (content, label, source).
        """
        settings = {k: v for k, v in fingerprint.settings_part(self.cls).items() if k not in _JOB_FREE}
        return fingerprint.digest({
            "settings": settings, "model": self.key, "mix": self.job_mix(job), "classes": self.classes,
            "metrics": stats.METRICS_VERSION,
            "train": [(it.key, it.label, it.source) for it in job.train],
            "test": [(it.key, it.label) for it in job.test],
        })

    @staticmethod
    def job_mix(job: Job) -> list:
        """What of the mix changes training beyond its items: its kind (class weights, augmentation off)."""
        return [job.mix.kind, job.mix.class_weighted, job.mix.augment_off]

    def run(self, job: Job) -> dict:
        """Train on job.train, test on job.test -> the per-fold result record."""
        from .train import predict, train

        c, n_classes = self.cls, len(self.classes)
        index = {name: i for i, name in enumerate(self.classes)}
        y = np.array([index[it.label] for it in job.train])
        y_test = np.array([index[it.label] for it in job.test])
        rows = np.array([self.row[it.key] for it in job.train])
        test_rows = np.array([self.row[it.key] for it in job.test])
        augment = c.augment and not job.mix.augment_off
        weighted = c.class_weights or job.mix.class_weighted
        head_seed = c.seed * 1000 + job.fold.index  # the same initial head for every mix of a fold
        t0 = time.perf_counter()
        model = self.model(augment).reset(head_seed, aug_seed=c.seed)
        if c.feature_cache:
            views = self.views if augment else [PLAIN]
            losses = train(model, lambda e, idx: self.feats[views[e % len(views)]][rows[idx]], y, n_classes,
                           c.epochs, c.batch_size, head_seed, weighted)
            x_test = self.feats[PLAIN][test_rows]
        else:
            losses = train(model, lambda e, idx: self.pixels[rows[idx]].astype(np.float32), y, n_classes,
                           c.epochs, c.batch_size, head_seed, weighted)
            x_test = None
        head = self._models[augment and not c.feature_cache].head
        if c.fine_tune_layers > 0:
            model = self.fine_tune(head, rows, y, augment, weighted, head_seed)
            x_test = None
        if x_test is None:
            x_test = self.pixels_for(test_rows)
        probs = predict(model, x_test, c.batch_size)
        y_pred = probs.argmax(axis=1)
        return {
            "fold": job.fold.index,
            "repeat": job.fold.repeat,
            "mix": job.mix.name,
            "tree": job.tree,
            "leaky": job.leaky,
            "synthetic_tree": job.synthetic_root,
            "fingerprint": job.fingerprint,  # set by the protocol: self.fingerprint(job), the items carry the reading rule
            "metrics": stats.fold_metrics(y_test, y_pred, self.classes),
            "counts": counts(job.train),
            "n_train": len(job.train),
            "n_test": len(job.test),
            "n_train_real": sum(it.source != "synthetic" for it in job.train),
            "synthetic_fraction": sum(it.source == "synthetic" for it in job.train) / max(1, len(job.train)),
            "shortfall": job.shortfall,
            "losses": [round(v, 6) for v in losses],
            "seconds": round(time.perf_counter() - t0, 3),
            "test": [str(it.path) for it in job.test],
            "y_true": y_test.tolist(),
            "y_pred": y_pred.tolist(),
            "probs": np.round(probs, 5).tolist(),
        }

    def model(self, augment: bool):
        """The reusable compiled model: the head alone (cached path) or pixels -> base -> head (naive)."""
        from .model import Resettable, build_full, build_head, compile_model

        key = augment and not self.cls.feature_cache
        if key not in self._models:
            n_features = self.feats[PLAIN].shape[1] if self.cls.feature_cache else self.base.output_shape[-1]
            head = build_head(n_features, len(self.classes))
            model = head if self.cls.feature_cache else build_full(self.base, head, self.cls.image_size, augment, seed=self.cls.seed)
            compile_model(model, self.cls.learning_rate)
            self._models[key] = Resettable(model, head, n_features, len(self.classes))
        return self._models[key]

    def pixels_for(self, rows: np.ndarray) -> np.ndarray:
        if self.pixels is None:
            from .pixels import load_pixels

            self.pixels = load_pixels(self.table.paths, self.cls.image_size, self.table.reading, self.progress)
        return self.pixels[rows].astype(np.float32)

    def fine_tune(self, head, rows, y, augment, weighted, seed):
        """Second phase: a fresh copy of the base, top layers unfrozen (BN frozen), low learning rate."""
        from .model import build_full, compile_model, unfreeze_top
        from .train import train

        c = self.cls
        base = self._make_base()
        unfreeze_top(base, c.fine_tune_layers)
        model = build_full(base, head, c.image_size, augment, seed=c.seed)
        compile_model(model, c.fine_tune_lr)
        self.pixels_for(rows[:1])
        train(model, lambda e, idx: self.pixels[rows[idx]].astype(np.float32), y, len(self.classes),
              c.fine_tune_epochs, c.batch_size, seed + 1, weighted)
        return model


# ---------------------------------------------------------------- the run's fingerprint


def run_fingerprint(dataset: Dataset, split: Split, syn: SyntheticSet | None, jobs: list[Job], runner, cls) -> dict:
    """The parts of what determines a CV run's results: settings, base model, data images, split, synthetic trees
    (the protocol adds the reading rule).

    Parts (prompts.fingerprint): `settings.<key>` (each result-changing field of the classify
    section, so a refusal names the key),
    `weights` (imagenet, none, or the sha256 of the weights file), `model` (backbone, weights,
    input size, Keras version and backend: the feature-cache key), `data`
    (path, label and sha256 of every image), `split` (the folds' train and test lists),
    `synthetic` (per tree: the sha256 of its images and the digest of its own fingerprint.json).
    """
    from .model import normalize_weights
    from .synthetic import tree_record

    settings = {k: v for k, v in fingerprint.settings_part(cls).items() if k != "weights" and k not in REPORT_ONLY}
    data = [(r.path, r.label, fingerprint.file_sha256(dataset.root / r.path)) for r in dataset.records]
    folds = [[f.repeat, f.fold, list(f.train), list(f.test)] for f in split.folds]
    used = sorted({j.synthetic_root for j in jobs if j.synthetic_root})
    synthetic = {}
    for t in (syn.trees() if syn else []):
        if str(t.root) not in used:
            continue
        found = tree_record(t.root)
        synthetic[t.root.relative_to(syn.root).as_posix()] = {
            "images": fingerprint.files_part([r.path for r in t.records], root=t.root),
            "record": fingerprint.digest(found[1]) if found else None,
        }
    parts = {f"settings.{k}": v for k, v in settings.items()}
    w = normalize_weights(cls.weights)
    weights = fingerprint.file_sha256(w) if w not in (None, "imagenet") else w
    return {**parts, "weights": weights, "model": runner.key, "data": data, "split": folds, "synthetic": synthetic,
            "metrics": stats.METRICS_VERSION}
