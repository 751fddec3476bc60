"""The cross-validation protocol: every (LoRA weight, mix, fold) trained and tested once.

Reads top to bottom:
1. read the data and the split (or make one), the mixes and the synthetic trees;
2. list the jobs; build each job's training set and check it for leakage (synthetic
   images that are test images; trees whose LoRAs were trained on the fold's test images);
3. compare the run's fingerprint with the one OUT holds (a different one needs --overwrite);
4. features (cached path) or pixels (naive path) of every image involved; then record the
   fingerprint (and the split when `cv` made it) in OUT;
5. train and test each job, saving its result at once (a re-run skips it);
6. summarise over folds and compare each mix with `real`.

Nothing imports TensorFlow before step 3, so a bad input is one line on stderr.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis import stats
from prompts import fingerprint
from prompts.dataset import Dataset, read_dataset
from prompts.errors import UserError
from prompts.files import write_json_atomic
from prompts.guard import check_output_dir
from prompts.layout import FINGERPRINT_FILE, FOLDS_CSV, REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUNS_DIR, SPLIT_FILE
from prompts.splits import Fold, Split, read_split, write_split

from .features import PLAIN, Extractor, FeatureCache, ImageTable, aug_views, compute_features, default_cache_dir, image_key
from .folds import make_split
from .mixes import Item, Mix, build_training_set, counts, parse_mixes, subsample_minority
from .results import REAL_TREE, annotate
from .synthetic import SyntheticSet, check_provenance, read_synthetic

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One training run: a fold, a mix, and the synthetic tree it draws from (or REAL_TREE)."""

    fold: Fold
    mix: Mix
    tree: str
    train: list[Item]
    test: list[Item]
    shortfall: dict[str, int] = field(default_factory=dict)
    leaky: bool = False
    synthetic_root: str | None = None  # the w<weight>/ tree the synthetic images came from

    @property
    def result_path(self) -> Path:
        return Path(RUNS_DIR) / self.tree / self.mix.name / f"{self.fold.name}.json"


# ---------------------------------------------------------------- inputs


def load_inputs(data_section, cls) -> tuple[Dataset, Split, list[Mix], SyntheticSet | None]:
    """The dataset, the split (read, or made: `run_cv` writes it to OUT/split.json), the mixes, the synthetic set.

    Writes nothing: OUT is only checked (never inside the data folder, not a file).
    """
    if not data_section.data:
        raise UserError("no data folder: pass --data DIR (or data.data in --config)")
    out = check_output_dir(cls.output, data=data_section.data)
    dataset = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images)
    if data_section.split:
        split = read_split(data_section.split, dataset)
    else:
        split = make_split(dataset, cls.folds, cls.repeats, cls.group_by, cls.seed)
        split.path = out / SPLIT_FILE
    mixes = parse_mixes(cls.mixes)
    syn = read_synthetic(cls.synthetic, dataset.classes) if cls.synthetic else None
    if syn is None and any(m.uses_synthetic for m in mixes):
        need = ", ".join(m.name for m in mixes if m.uses_synthetic)
        raise UserError(f"mixes {need} need synthetic images: pass --synthetic DIR (written by `python -m generate`) or drop them from --mixes")
    return dataset, split, mixes, syn


def plan_jobs(dataset: Dataset, split: Split, mixes: list[Mix], syn: SyntheticSet | None, cls) -> list[Job]:
    """Every (tree, mix, fold) job with its training and test items, leak-checked.

    A fold's own tree is checked against the fold's test images by what its LoRAs were
    trained on (the tree's fingerprint.json); trees without that record are named in one
    warning. Shared trees stand in knowingly and are flagged as leaky in the report.
    """
    h = image_key  # content keys of the decoded pixels, memoised per (path, size, mtime): not the file's metadata
    rec = dataset.by_path()
    classes = dataset.classes
    trees = syn.weights if syn and any(m.uses_synthetic for m in mixes) else []
    unchecked: list[Path] = []
    jobs = []
    for fold in split.folds:
        real = [Item(dataset.root / p, rec[p].label, h(dataset.root / p)) for p in fold.train]
        test = [Item(dataset.root / p, rec[p].label, h(dataset.root / p)) for p in fold.test]
        test_hashes = {p: fingerprint.file_sha256(dataset.root / p) for p in fold.test}  # as `lora train` records them
        for tree in trees:
            ds, leaky = syn.tree(fold.index, tree)
            if not leaky and not check_provenance(fold.index, ds.root, test_hashes):
                unchecked.append(ds.root)
        if cls.minority_fraction is not None:
            real = subsample_minority(real, cls.minority_fraction, cls.minority_class, np.random.default_rng([cls.seed, fold.index, 7]))
        for mix in mixes:
            for tree in (trees if mix.uses_synthetic else [REAL_TREE]):
                synthetic, leaky, root = [], False, None
                if mix.uses_synthetic:
                    ds, leaky = syn.tree(fold.index, tree)
                    root = str(ds.root)
                    synthetic = [Item(ds.root / r.path, r.label, h(ds.root / r.path), "synthetic") for r in ds.records]
                rng = np.random.default_rng([cls.seed, fold.index, zlib.crc32(mix.name.encode()), zlib.crc32(tree.encode())])
                train, shortfall = build_training_set(mix, real, synthetic, classes, rng)
                job = Job(fold, mix, tree, train, test, shortfall, leaky, root)
                check_no_leak(job)
                jobs.append(job)
    if unchecked:
        log.warning("%d synthetic tree(s) have no record of the images their LoRAs were trained on (%s in %s), e.g. %s: "
                    "cannot check that they never saw their fold's test images; trees written by `python -m generate` "
                    "with LoRAs from `lora train` have it", len(unchecked), "images", FINGERPRINT_FILE, unchecked[0])
    return jobs


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

    def __init__(self, jobs: list[Job], classes: list[str], cls, progress: bool = True):
        from .model import build_base, model_key

        self.cls, self.classes, self.progress = cls, classes, progress
        self.table = ImageTable.from_paths(sorted({it.path for j in jobs for it in (*j.train, *j.test)}))
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
            self.pixels = load_pixels(self.table.paths, self.cls.image_size, self.progress)
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
            "fingerprint": self.fingerprint(job),
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

            self.pixels = load_pixels(self.table.paths, self.cls.image_size, self.progress)
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


# ---------------------------------------------------------------- the protocol


def run_cv(data_section, cls, progress: bool = True) -> dict:
    """Run (or resume) the whole protocol and return the results dictionary (also written to OUT)."""
    from tqdm import tqdm

    from .model import check_backbone, import_keras, normalize_weights

    t_start = time.perf_counter()
    check_backbone(cls.backbone)
    weights = normalize_weights(cls.weights)
    dataset, split, mixes, syn = load_inputs(data_section, cls)
    out = Path(cls.output)
    jobs = plan_jobs(dataset, split, mixes, syn, cls)
    if weights is None:  # after the input checks: a bad input stays one line
        log.warning(WEIGHTS_NONE_WARNING)
    keras = import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    keras.utils.set_random_seed(cls.seed)
    runner = Runner(jobs, dataset.classes, cls, progress)
    current = run_fingerprint(dataset, split, syn, jobs, runner, cls)
    check_reuse(out, current, overwrite=cls.overwrite)
    todo, results = [], []
    for job in jobs:
        saved = _load_result(out / job.result_path)
        if saved is not None and saved.get("fingerprint") == runner.fingerprint(job):
            results.append(saved)
        else:
            todo.append(job)
    if todo:
        runner.prepare(todo)  # builds the base when features are missing: a bad weights file stops here
    fingerprint.claim(out, OUTPUT_NAMES, "classify cv")  # OUT is written only once every input checked out
    fingerprint.write(out / FINGERPRINT_FILE, current)
    if not data_section.split:
        write_split(split.path, split)
    bar = tqdm(todo, desc="folds x mixes", unit="run", disable=not progress or not todo)
    for job in bar:
        bar.set_postfix_str(f"{job.tree} {job.mix.name} {job.fold.name}")
        res = runner.run(job)
        write_json_atomic(out / job.result_path, res)
        results.append(res)
    summary = summarize(results, dataset, split, mixes, syn, cls)
    summary["timing"] = {
        "seconds_total": round(time.perf_counter() - t_start, 2),
        "seconds_features_or_pixels": round(runner.seconds_features, 2),
        "runs_trained": len(todo),
        "runs_reused": len(jobs) - len(todo),
    }
    return summary


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


def run_fingerprint(dataset: Dataset, split: Split, syn: SyntheticSet | None, jobs: list[Job], runner, cls) -> dict:
    """What determines a CV run's results: settings, base model, data images, split, synthetic trees.

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
    return fingerprint.make(**parts, weights=weights, model=runner.key, data=data, split=folds, synthetic=synthetic,
                            metrics=stats.METRICS_VERSION, reading=fingerprint.reading_part())


def check_reuse(out: Path, current: dict, overwrite: bool) -> None:
    """Refuse to mix results of other inputs into OUT, or to replace files it did not write, unless --overwrite.

    With --overwrite, runs whose own inputs did not change are still reused (each run
    carries its own fingerprint); only the report reflects the new inputs.
    """
    path = out / FINGERPRINT_FILE
    recorded = fingerprint.read(path) if path.exists() else None
    if not path.exists() and not overwrite:
        ours = [n for n in _OUTPUT_NAMES if (out / n).exists()]
        if ours:
            raise UserError(f"--output {out} already holds {ours[0]} but no {FINGERPRINT_FILE} of a CV run: it was not "
                            "written by this version of `classify cv`; pass --overwrite (classify.overwrite: true) to replace it "
                            "or choose another --output")
    if recorded is not None and not overwrite:
        fingerprint.check(recorded, current, f"the CV run in {out}",
                          "pass --overwrite (classify.overwrite: true) to recompute it there (runs whose own inputs did not change "
                          "are reused) "
                          "or choose another --output")
    elif recorded is None and path.exists():
        log.warning("%s is unreadable; recording a new fingerprint", path)
    elif recorded is not None and (changed := fingerprint.diff(recorded, current)):
        log.info("--overwrite: %s changed since the last run in %s; runs whose inputs changed are recomputed",
                 ", ".join(changed), out)


def _load_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summarize(results: list[dict], dataset: Dataset, split: Split, mixes: list[Mix], syn, cls) -> dict:
    """Mean/std over folds per (tree, mix), the paired comparison with `real` of the same fold, each mix's verdict
    and flags, and the study's flags (classify.results; `CVResults.from_dict` gives the typed view)."""
    by = {}
    for r in results:
        by.setdefault((r["tree"], r["mix"]), {})[r["fold"]] = r
    trees = syn.weights if syn else []
    table_names = trees or [REAL_TREE]
    n_train = float(np.mean([len(f.train) for f in split.folds]))
    n_test = float(np.mean([len(f.test) for f in split.folds]))
    real_runs = by.get((REAL_TREE, "real"))
    tables = {}
    for t in table_names:
        rows = []
        for mix in mixes:
            tree = t if mix.uses_synthetic else REAL_TREE
            runs = by.get((tree, mix.name), {})
            folds = sorted(runs)
            row = {"mix": mix.name, "tree": tree, "uses_synthetic": mix.uses_synthetic, "folds": folds, "metrics": {}, "vs_real": {}}
            for m in stats.METRICS:
                vals = [runs[k]["metrics"][m] for k in folds]
                mean, std = stats.mean_std(vals)
                row["metrics"][m] = {"mean": mean, "std": std, "folds": vals}
                if real_runs and mix.name != "real":
                    vs = stats.paired_vs_real(runs, real_runs, m, n_train, n_test)
                    row["vs_real"][m] = {"diff_mean": vs["diff_mean"], "diff_std": vs["diff_std"], "t": vs["t"], "p": vs["p"],
                                         "min_significant_diff": stats.critical_difference(vs["diff_std"], len(vs["diffs"]),
                                                                                           n_train, n_test)}
            row["synthetic_fraction"] = float(np.mean([runs[k]["synthetic_fraction"] for k in folds])) if folds else 0.0
            row["confusion"] = np.sum([runs[k]["metrics"]["confusion"] for k in folds], axis=0).tolist() if folds else []
            row["per_class"] = {
                c: {m: stats.mean_std([runs[k]["metrics"]["per_class"][c][m] for k in folds])[0] for m in ("precision", "recall", "f1")}
                for c in dataset.classes
            } if folds else {}
            row["leaky_folds"] = [k for k in folds if runs[k].get("leaky")]
            shortfall: dict[str, int] = {}
            for k in folds:
                for c, n in runs[k].get("shortfall", {}).items():
                    shortfall[c] = shortfall.get(c, 0) + n
            row["shortfall"] = shortfall
            rows.append(row)
        tables[t] = rows
    settings = {k: v for k, v in dataclasses.asdict(cls).items()}
    return annotate({
        "version": 1,
        "data": str(dataset.root),
        "split": str(split.path) if split.path else None,
        "group_by": split.group_by,
        "synthetic": str(syn.root) if syn else None,
        "synthetic_per_fold": sorted(syn.per_fold) if syn else [],
        "classes": dataset.classes,
        "class_counts": dataset.class_counts(),
        "n_folds": len(split.folds),
        "n_splits": split.n_splits,
        "repeats": split.repeats,
        "n_train_mean": n_train,
        "n_test_mean": n_test,
        "wilcoxon_min_p": stats.wilcoxon_floor(len(split.folds)),
        "settings": settings,
        "tables": tables,
        "runs": [{k: v for k, v in r.items() if k not in ("probs", "test", "y_true", "y_pred", "losses")} for r in results],
    })
