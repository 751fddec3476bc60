"""`segment cv`: the cross-validation protocol (`analysis.crossval`) with the segmentation task.

The protocol owns the skeleton (output folder, split, mixes, jobs, fingerprints with the reading rule, reuse,
claims, the run, the paired comparison with `real`, the Holm families); this module adds only what
segmentation does differently:
1. its items: image-mask pairs (`prompts.pairs.read_pairs`) keyed by the sha256 of both files; synthetic
   pairs from `controlnet generate`'s trees; leaks refused (`LeakError`): a synthetic pair that is a test
   pair of its fold (path or sha256), a tree whose generator or conditions came from a test pair of the fold;
2. `train_and_score`: a U-Net trained on the job's pairs and scored on the fold's real test pairs only
   (`Runner.train_and_score`), with outline overlays of the first fold's first test pairs;
3. its metrics (`segment.metrics.METRICS`, AP at IoU 0.5 the primary), its mixes (the segmentation
   vocabulary: real, real+P, synthetic), its results record (verdicts: one Holm family over every synthetic mix).

`run_cv(data_section, segment_section)` is the Python API: validated settings in, the results dictionary
out, `prompts.errors.UserError` (and its `LeakError`) for bad input. Nothing imports TensorFlow before the
inputs are checked, so a bad input is one line on stderr.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from analysis import crossval, stats
from analysis.crossval import REAL_TREE, FoldTree, Inputs, Job  # noqa: F401  (REAL_TREE re-exported for the report)
from prompts import fingerprint
from prompts.dataset import Dataset, pairs_dataset
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUNS_DIR, SPLIT_FILE, fold_name
from prompts.mixes import SEGMENTATION, Mix
from prompts.splits import Fold, Split

from . import metrics
from .mixes import PairItem, training_set
from .synthetic import LeakError, SyntheticPairs, check_provenance, read_synthetic, tree_record

log = logging.getLogger(__name__)
OVERLAYS_DIR = "overlays"
PRIMARY = "ap50"
# settings that reach a job only through its pairs (or not at all)
_JOB_FREE = frozenset({"mixes", "folds", "repeats", "group_by", "weights", "delta", "overlays", "realism", "synthetic", "output"})
_OUTPUT_NAMES = (REPORT_MD, REPORT_HTML, RESULTS_CSV, RESULTS_JSON, SPLIT_FILE, RUNS_DIR, OVERLAYS_DIR, "predictions")
SMOKE_WARNING = ("segment.weights is {w}: the U-Net's encoder starts from random weights{narrow}; with few pairs its "
                 "scores and p-values are a smoke test, not an answer; use --weights imagenet or an encoder weights file")


def run_cv(data_section, seg, progress: bool = True) -> dict:
    """Run (or resume) the segmentation CV and return the results dictionary (each run also in OUT/runs).

    data_section: `prompts.schema.DataSection` (data, split, reading rule); seg: `prompts.schema.SegmentSection`.
    Raises UserError (LeakError for leaks) before anything is written when an input is bad.
    """
    from .model import check_backbone, check_image_size, normalize_weights

    check_backbone(seg.backbone)
    check_image_size(seg.image_size)
    normalize_weights(seg.weights)
    return crossval.run(SegmentTask(data_section, seg, progress))


def _item(pair, source: str = "real") -> PairItem:
    """A pair of `prompts.pairs.read_pairs` (paths already joined with its folder) with its files' sha256."""
    h = fingerprint.file_sha256
    return PairItem(Path(pair.image), Path(pair.mask), h(pair.image), h(pair.mask), source, pair.name)


class SegmentTask(crossval.Task):
    """Segmentation's part of the protocol: image-mask pairs, the U-Net, AP at IoU 0.5."""

    command, section_name, run_name = "segment cv", "segment", "segmentation CV run"
    noun, generator = "pairs", "controlnet generate"
    output_names = _OUTPUT_NAMES
    metrics, primary, vocabulary = metrics.METRICS, PRIMARY, SEGMENTATION
    vs_real_fields = ("diff_mean", "diff_std", "t", "p", "ci", "j", "diffs")
    bulky = ("losses", "test")
    keys_read_pixels = False  # pairs are keyed by their files' bytes: the protocol adds the reading rule
    unchecked_warning = (f"%d synthetic tree(s) have no record of the pairs their generator was trained on (images in "
                         f"{FINGERPRINT_FILE}), e.g. %s: cannot check that they never saw their fold's test pairs")

    def __init__(self, data, seg, progress: bool = True):
        super().__init__(data, seg, progress)
        self.items: dict[str, PairItem] = {}
        self.syn: SyntheticPairs | None = None
        self.runner: Runner | None = None
        self.first_fold = 0

    # -- items

    def read_items(self) -> Dataset:
        from prompts.pair_layouts import layout_of
        from prompts.pairs import read_pairs

        root = Path(self.data.data)
        pairs = read_pairs(root, layout_of(self.data))
        if not pairs:
            raise UserError(f"{root} holds no image-mask pairs; expected {root}/images/ + {root}/masks/ or Cellpose's name.tif + name_masks.tif")
        self.items = {p.name: _item(p) for p in pairs}
        return pairs_dataset(root, pairs)

    def read_synthetic(self, mixes: list[Mix]) -> SyntheticPairs | None:
        seg = self.section
        self.syn = read_synthetic(seg.synthetic) if seg.synthetic and any(m.uses_synthetic for m in mixes) else None
        return self.syn

    def fold_items(self, fold: Fold) -> tuple[list[PairItem], list[PairItem]]:
        return [self.items[p] for p in fold.train], [self.items[p] for p in fold.test]

    def tree_items(self, fold: Fold, name: str) -> FoldTree:
        """The fold's own tree is checked against the fold's test pairs by what its generator and conditions came from."""
        tree, leaky = self.syn.tree(fold.index, name)
        root = Path(self.data.data)
        test_hashes = {p: self.items[p].image_sha for p in fold.test}
        test_hashes.update({_mask_rel(self.items[p], root): self.items[p].mask_sha for p in fold.test})
        checked = leaky or check_provenance(fold.index, tree.root, self.syn.root, test_hashes)
        return FoldTree([_item(p, "synthetic") for p in tree.pairs], leaky, tree.root, checked)

    def training_set(self, mix: Mix, real, synthetic, rng):
        return training_set(mix, real, synthetic, rng)

    def check_no_leak(self, job: Job) -> None:
        check_no_leak(job)

    # -- training

    def start(self, inputs: Inputs, jobs: list[Job]) -> None:
        from analysis.keras import import_keras

        from .model import normalize_weights

        w = normalize_weights(self.section.weights)
        if w in ("tiny", "none"):
            log.warning(SMOKE_WARNING.format(w=w, narrow=" and a narrow decoder" if w == "tiny" else ""))
        import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
        self.runner = Runner(self.section, self.reading, self.progress, self.data.masks, Path(self.section.output),
                             self.data.images_dir)
        self.first_fold = inputs.split.folds[0].index

    def fingerprint_parts(self, inputs: Inputs, jobs: list[Job]) -> dict:
        return run_fingerprint(self.items, inputs.split, inputs.synthetic, jobs, self.runner, self.section)

    def job_fingerprint(self, job: Job) -> str:
        return self.runner.fingerprint(job)

    def prepare(self, todo: list[Job]) -> None:
        self.runner.cache.load([it for j in todo for it in (*j.train, *j.test)], self.progress)
        if todo and self.section.model == "unet":
            self.runner.trainer  # noqa: B018 - built before anything is written, so a bad weights file writes nothing

    def train_and_score(self, job: Job) -> dict:
        """The job's result record; overlays (first fold only) under OUT/overlays/<tree>/<mix>/<fold>, paths OUT-relative."""
        out = Path(self.section.output)
        first = self.first_fold
        overlay_dir = out / OVERLAYS_DIR / job.tree / job.mix.name / fold_name(first) if job.fold.index == first else None
        res = self.runner.train_and_score(job, overlay_dir)
        res["overlays"] = [Path(p).relative_to(out).as_posix() for p in res["overlays"]]
        return res

    # -- summary

    def row_fields(self, runs: list[dict]) -> dict:
        return {"overlays": next((r.get("overlays", []) for r in runs if r.get("overlays")), []), "per_set": pooled_sets(runs)}

    def results(self, inputs: Inputs, common: dict, tables: dict, runs: list[dict]) -> dict:
        """The results record, each synthetic mix's verdict against `real` (one Holm family) in its row, unless the
        `real` baseline did not learn (`learning_check`): then no verdict at all, and the reason."""
        seg = self.section
        floor = floor_summary([r for r in runs if r["mix"] == "real" and r["tree"] == REAL_TREE])
        learned = learning_check(tables, floor, seg.model)
        if learned is None:
            crossval.holm_verdicts(tables, PRIMARY, common["n_train_mean"], common["n_test_mean"], common["n_splits"], seg.delta)
        training = next((r.get("training") for r in runs if r.get("training")), None)
        return {"model": seg.model, "floor": floor, "not_learned": learned, "training": training, "version": 1, "task": "segmentation", **common, "n_pairs": len(inputs.dataset.records), "primary": PRIMARY,
                "settings": dataclasses.asdict(self.section), "tables": tables, "runs": runs}


# ---------------------------------------------------------------- leaks


def _mask_rel(item: PairItem, root: Path) -> str:
    """The mask's path relative to the data folder (for the provenance check by path)."""
    try:
        return item.mask.relative_to(root).as_posix()
    except ValueError:
        return item.mask.as_posix()


def check_no_leak(job: Job) -> None:
    """No synthetic pair may be a test pair of its fold: not the same image or mask file, not the same content."""
    test_paths = {p.resolve() for it in job.test for p in (it.image, it.mask)}
    test_keys = {}
    for it in job.test:
        test_keys[it.image_sha] = it.image
        test_keys[it.mask_sha] = it.mask
    for it in job.train:
        if it.source != "synthetic":
            continue
        for path, sha in ((it.image, it.image_sha), (it.mask, it.mask_sha)):
            if path.resolve() in test_paths or sha in test_keys:
                raise LeakError(f"synthetic pair file {path} is {test_keys.get(sha, path)} of {job.fold.name}'s test pairs: "
                                "synthetic pairs must never hold a test image or mask; remove it from the synthetic folder")


# ---------------------------------------------------------------- training


class Runner:
    """Trains and tests jobs with one reusable U-Net (`model.Trainer`), or StarDist, or the classical floor."""

    def __init__(self, seg, reading, progress: bool = True, mask_kind: str = "auto", out: Path | None = None,
                 images_dir: str = "images"):
        from .model import model_key
        from .pixels import PairCache

        self.seg, self.progress, self.mask_kind, self.out, self.images_dir = seg, progress, mask_kind, out, images_dir
        self.reading = reading  # the data section's rule: every image of the run is read with it
        self.key = model_key(seg.backbone, seg.weights, seg.image_size, seg.seed)
        self.cache = PairCache(seg.image_size, mask_kind, reading)
        self._trainer = None
        self._truths: dict = {}  # mask path -> its MaskRead at native size: a fold's test masks serve every mix and tree

    def truth(self, mask: Path):
        """The mask as read at its native size (`prompts.masks.MaskRead`), read once per run."""
        from prompts.masks import read_mask

        if mask not in self._truths:
            self._truths[mask] = read_mask(mask, self.mask_kind)
        return self._truths[mask]

    @property
    def trainer(self):
        if self._trainer is None:
            from .model import Trainer

            s = self.seg
            self._trainer = Trainer(s.backbone, s.weights, s.image_size, s.seed, s.learning_rate)
        return self._trainer

    def fingerprint(self, job: Job) -> str:
        settings = {k: v for k, v in fingerprint.settings_part(self.seg).items() if k not in _JOB_FREE}
        return fingerprint.digest({
            "settings": settings, "model": self.key, "mix": job.mix.kind, "metrics": metrics.METRICS_VERSION,
            "masks": self.mask_kind, "train": [(it.key, it.source) for it in job.train], "test": [it.key for it in job.test],
        })

    def train_and_score(self, job: Job, overlay_dir: Path | None) -> dict:
        """Train on job.train, segment job.test at each image's own size -> the per-fold result record."""
        from . import native
        from .models import predict_floor, train_and_predict

        s = self.seg
        t0 = time.perf_counter()
        reads = [self.truth(it.mask) for it in job.test]
        truths = [r.labels for r in reads]
        names = [it.name or it.image.name for it in job.test]
        seed = s.seed * 1000 + job.fold.index  # the same shuffling and augmentation for every mix of a fold
        preds, losses, training = train_and_predict(self, job, seed)
        scores = metrics.score_set(zip(truths, preds))
        floor = None
        if job.mix.name == "real" and s.model != "otsu-watershed":  # the floor beside every learned model, on the same test pairs
            floor_preds = predict_floor([it.image for it in job.test], s.min_size, self.reading)
            floor = {"metrics": metrics.score_set(zip(truths, floor_preds)),
                     "per_set": native.per_set_scores(names, truths, floor_preds, self.images_dir)}
        predictions = []
        if self.out is not None:
            for name, pred in zip(names, preds):
                path = native.prediction_path(self.out, job.tree, job.mix.name, job.fold.name, name)
                predictions.append(native.write_prediction(path, pred).relative_to(self.out).as_posix())
        overlays = []
        if overlay_dir is not None:
            from .overlay import write_overlay

            for i in native.overlay_picks(names, s.overlays, self.images_dir):
                path = overlay_dir / native.set_of(names[i], self.images_dir) / f"{i:02d}.png"
                image = native.contrast_stretch(native.load_image_native(job.test[i].image, self.reading))
                write_overlay(path, image, truths[i], preds[i])
                overlays.append(path.as_posix())
        kinds = [r.kind for r in reads]
        return {
            "fold": job.fold.index, "repeat": job.fold.repeat, "mix": job.mix.name, "tree": job.tree, "leaky": job.leaky,
            "synthetic_tree": job.synthetic_root, "fingerprint": job.fingerprint, "metrics": scores,
            "model": s.model, "training": training, "floor": floor,
            "per_set": native.per_set_scores(names, truths, preds, self.images_dir),
            "per_image": native.per_image_rows(names, truths, preds, kinds, self.images_dir),
            "mask_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
            "n_train": len(job.train), "n_test": len(job.test),
            "n_train_real": sum(it.source != "synthetic" for it in job.train),
            "synthetic_fraction": sum(it.source == "synthetic" for it in job.train) / max(1, len(job.train)),
            "shortfall": job.shortfall, "losses": [round(v, 6) for v in losses], "seconds": round(time.perf_counter() - t0, 3),
            "test": [str(it.image) for it in job.test], "overlays": overlays, "predictions": predictions,
        }


# ---------------------------------------------------------------- the run's fingerprint


def run_fingerprint(items: dict[str, PairItem], split: Split, syn: SyntheticPairs | None, jobs: list[Job], runner, seg) -> dict:
    """The parts of what determines a CV run's results: settings, initial network, data pairs, split, synthetic trees
    (the protocol adds the reading rule)."""
    from .model import weights_id

    settings = {k: v for k, v in fingerprint.settings_part(seg).items() if k not in ("weights", "realism", "output", "delta")}
    parts = {f"settings.{k}": v for k, v in settings.items()}
    data = sorted((p, it.key) for p, it in items.items())
    folds = [[f.repeat, f.fold, list(f.train), list(f.test)] for f in split.folds]
    used = sorted({j.synthetic_root for j in jobs if j.synthetic_root})
    synthetic = {}
    for t in (syn.trees() if syn else []):
        if str(t.root) in used:
            found = tree_record(t.root, syn.root)
            synthetic[t.root.relative_to(syn.root).as_posix() or "."] = {
                "pairs": sorted(_item(p, "synthetic").key for p in t.pairs),
                "record": fingerprint.digest(found[1]) if found else None}
    return {**parts, "weights": weights_id(seg.weights), "model": runner.key, "data": data, "split": folds,
            "synthetic": synthetic, "metrics": metrics.METRICS_VERSION}


# ---------------------------------------------------------------- flags


NOT_LEARNED = "the model did not learn; more epochs, more pairs, or a larger model"
MIN_AP50 = 0.05  # a `real` baseline below this AP50 has not learned, whatever the floor does


def _mean_over(runs: list[dict], get) -> dict:
    vals = [get(r) for r in runs]
    mean, std = stats.mean_std(vals)
    return {"mean": mean, "std": std, "folds": vals}


def pooled_sets(runs: list[dict]) -> dict:
    """Per set: mean ± sd over folds of AP50, F1, mean matched IoU, PQ, and objects true / predicted summed over folds."""
    names = sorted({s for r in runs for s in r.get("per_set", {})})
    out = {}
    for name in names:
        have = [r["per_set"][name] for r in runs if name in r.get("per_set", {})]
        out[name] = {m: _mean_over(have, lambda x, m=m: x[m]) for m in ("ap50", "ap50_90", "f1", "mean_iou", "pq")}
        out[name].update(n_true=int(sum(x["n_true"] for x in have)), n_pred=int(sum(x["n_pred"] for x in have)),
                         n_images=int(sum(x["n_images"] for x in have)))
    return out


def floor_summary(real_runs: list[dict]) -> dict | None:
    """The classical floor on the `real` mix's test pairs: mean ± sd over folds of every metric, and per set."""
    have = [r["floor"] for r in real_runs if r.get("floor")]
    if not have:
        return None
    return {"model": "otsu-watershed", "metrics": {m: _mean_over(have, lambda x, m=m: x["metrics"][m]) for m in metrics.METRICS},
            "per_set": pooled_sets(have)}


def learning_check(tables: dict, floor: dict | None, model: str) -> str | None:
    """Why no verdict may be given (the `real` baseline did not learn), or None when verdicts may be given.

    A `real` baseline whose mean AP50 is below MIN_AP50, or not above the classical floor's on the
    same test pairs, has not learned: comparing mixes of such a model says nothing about the mixes.
    """
    if model == "otsu-watershed":
        return "the classical floor needs no training, so the mixes cannot differ: no verdict"
    real = next((r for rows in tables.values() for r in rows if r["mix"] == "real" and r["folds"]), None)
    if real is None:
        return None
    ap = real["metrics"][PRIMARY]["mean"]
    if ap < MIN_AP50:
        return f"`real` AP50 is {ap:.3f} (< {MIN_AP50}): {NOT_LEARNED}"
    if floor is not None and ap <= floor["metrics"][PRIMARY]["mean"]:
        return (f"`real` AP50 {ap:.3f} does not beat the classical floor (Otsu + watershed, AP50 "
                f"{floor['metrics'][PRIMARY]['mean']:.3f}): {NOT_LEARNED}")
    return None
