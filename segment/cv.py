"""The segmentation cross-validation: every (synthetic tree, mix, fold) trained and tested once.

Reads top to bottom, like `classify cv`:
1. read the pairs and the split (or make one), the mixes and the synthetic trees;
2. list the jobs; build each job's training set; refuse leaks (`LeakError`): a synthetic pair
   that is a test pair of its fold (path or sha256), a tree whose generator or conditions came
   from a test pair of the fold (its fingerprint.json);
3. compare the run's fingerprint with the one OUT holds (a different one needs overwrite);
4. load the pairs at the U-Net's size; record the fingerprint (and the split, when made here);
5. train and test each job on the fold's real test pairs only, saving its result at once (a
   re-run skips it), with outline overlays of the first fold's first test pairs;
6. summarise over folds, compare each mix with `real` (corrected t-test, Holm), give verdicts.

`run_cv(data_section, segment_section)` is the Python API: validated settings in, the results
dictionary out, `prompts.errors.UserError` (and its `LeakError`) for bad input. Nothing imports
TensorFlow before step 3, so a bad input is one line on stderr.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import stats
from prompts import fingerprint
from prompts.errors import UserError
from prompts.files import write_json_atomic
from prompts.guard import check_output_dir
from prompts.layout import FINGERPRINT_FILE, REPORT_HTML, REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUNS_DIR, SPLIT_FILE, fold_name
from prompts.splits import Fold, Split, read_split, write_split

from . import metrics
from .mixes import Mix, PairItem, parse_mixes, training_set
from .synthetic import LeakError, SyntheticPairs, check_provenance, read_synthetic, tree_record

log = logging.getLogger(__name__)
REAL_TREE = "real"  # tree name of mixes that use no synthetic pairs
OVERLAYS_DIR = "overlays"
PRIMARY = "ap50"


@dataclass
class Job:
    fold: Fold
    mix: Mix
    tree: str
    train: list[PairItem]
    test: list[PairItem]
    shortfall: int = 0
    leaky: bool = False
    synthetic_root: str | None = None

    @property
    def result_path(self) -> Path:
        return Path(RUNS_DIR) / self.tree / self.mix.name / f"{self.fold.name}.json"


# ---------------------------------------------------------------- inputs


def _item(pair, source: str = "real") -> PairItem:
    """A pair of `prompts.pairs.read_pairs` (paths already joined with its folder) with its files' sha256."""
    h = fingerprint.file_sha256
    return PairItem(Path(pair.image), Path(pair.mask), h(pair.image), h(pair.mask), source, pair.name)


def load_inputs(data_section, seg):
    """(pairs dataset, items by data-relative path, split, mixes, synthetic pairs or None); writes nothing."""
    from prompts.pair_layouts import layout_of
    from prompts.pairs import read_pairs

    from .folds import make_split, pairs_dataset

    if not data_section.data:
        raise UserError("no data folder: pass --data DIR (or data.data in --config)")
    out = check_output_dir(seg.output, data=data_section.data)
    root = Path(data_section.data)
    pairs = read_pairs(root, layout_of(data_section))
    if not pairs:
        raise UserError(f"{root} holds no image-mask pairs; expected {root}/images/ + {root}/masks/ or Cellpose's name.tif + name_masks.tif")
    dataset = pairs_dataset(root, pairs)
    items = {p.name: _item(p) for p in pairs}
    if data_section.split:
        split = read_split(data_section.split, dataset)
    else:
        split = make_split(dataset, seg.folds, seg.repeats, seg.group_by, seg.seed)
        split.path = out / SPLIT_FILE
    mixes = parse_mixes(seg.mixes)
    syn = read_synthetic(seg.synthetic) if seg.synthetic and any(m.uses_synthetic for m in mixes) else None
    if syn is None and any(m.uses_synthetic for m in mixes):
        need = ", ".join(m.name for m in mixes if m.uses_synthetic)
        raise UserError(f"mixes {need} need synthetic pairs: pass --synthetic DIR (written by `controlnet generate`) or drop them from --mixes")
    return dataset, items, split, mixes, syn


def plan_jobs(items: dict[str, PairItem], split: Split, mixes: list[Mix], syn: SyntheticPairs | None, seed: int) -> list[Job]:
    """Every (tree, mix, fold) job with its training and test pairs, leak-checked."""
    trees = syn.names if syn else []
    unchecked: list[Path] = []
    jobs = []
    for fold in split.folds:
        real = [items[p] for p in fold.train]
        test = [items[p] for p in fold.test]
        test_hashes = {p: items[p].image_sha for p in fold.test}
        test_hashes.update({_mask_rel(items[p], split): items[p].mask_sha for p in fold.test})
        for name in trees:
            tree, leaky = syn.tree(fold.index, name)
            if not leaky and not check_provenance(fold.index, tree.root, syn.root, test_hashes):
                unchecked.append(tree.root)
        for mix in mixes:
            for name in (trees if mix.uses_synthetic else [REAL_TREE]):
                synthetic, leaky, root = [], False, None
                if mix.uses_synthetic:
                    tree, leaky = syn.tree(fold.index, name)
                    root = str(tree.root)
                    synthetic = [_item(p, "synthetic") for p in tree.pairs]
                rng = np.random.default_rng([seed, fold.index, zlib.crc32(mix.name.encode()), zlib.crc32(name.encode())])
                train, shortfall = training_set(mix, real, synthetic, rng)
                job = Job(fold, mix, name, train, test, shortfall, leaky, root)
                check_no_leak(job)
                jobs.append(job)
    if unchecked:
        log.warning("%d synthetic tree(s) have no record of the pairs their generator was trained on (images in %s), e.g. %s: "
                    "cannot check that they never saw their fold's test pairs", len(unchecked), FINGERPRINT_FILE, unchecked[0])
    return jobs


def _mask_rel(item: PairItem, split: Split) -> str:
    """The mask's path relative to the data folder (for the provenance check by path)."""
    try:
        return item.mask.relative_to(Path(split.data)).as_posix()
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

    def __init__(self, seg, progress: bool = True, mask_kind: str = "auto", out: Path | None = None, images_dir: str = "images"):
        from .model import model_key
        from .pixels import PairCache

        self.seg, self.progress, self.mask_kind, self.out, self.images_dir = seg, progress, mask_kind, out, images_dir
        self.key = model_key(seg.backbone, seg.weights, seg.image_size, seg.seed)
        self.cache = PairCache(seg.image_size, mask_kind)
        self._trainer = None

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

    def run(self, job: Job, overlay_dir: Path | None) -> dict:
        """Train on job.train, segment job.test at each image's own size -> the per-fold result record."""
        from prompts.masks import read_mask

        from . import native
        from .models import predict_floor, train_and_predict

        s = self.seg
        t0 = time.perf_counter()
        reads = [read_mask(it.mask, self.mask_kind) for it in job.test]
        truths = [r.labels for r in reads]
        names = [it.name or it.image.name for it in job.test]
        seed = s.seed * 1000 + job.fold.index  # the same shuffling and augmentation for every mix of a fold
        preds, losses, training = train_and_predict(self, job, seed)
        scores = metrics.score_set(zip(truths, preds))
        floor = None
        if job.mix.name == "real" and s.model != "otsu-watershed":  # the floor beside every learned model, on the same test pairs
            floor_preds = predict_floor([it.image for it in job.test], s.min_size)
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
                image = native.contrast_stretch(native.load_image_native(job.test[i].image))
                write_overlay(path, image, truths[i], preds[i])
                overlays.append(path.as_posix())
        kinds = [r.kind for r in reads]
        return {
            "fold": job.fold.index, "repeat": job.fold.repeat, "mix": job.mix.name, "tree": job.tree, "leaky": job.leaky,
            "synthetic_tree": job.synthetic_root, "fingerprint": self.fingerprint(job), "metrics": scores,
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


# settings that reach a job only through its pairs (or not at all)
_JOB_FREE = frozenset({"mixes", "folds", "repeats", "group_by", "weights", "delta", "overlays", "realism", "synthetic", "output"})
_OUTPUT_NAMES = (REPORT_MD, REPORT_HTML, RESULTS_CSV, RESULTS_JSON, SPLIT_FILE, RUNS_DIR, OVERLAYS_DIR, "predictions")
SMOKE_WARNING = ("segment.weights is {w}: the U-Net's encoder starts from random weights{narrow}; with few pairs its "
                 "scores and p-values are a smoke test, not an answer; use --weights imagenet or an encoder weights file")


# ---------------------------------------------------------------- the protocol


def run_cv(data_section, seg, progress: bool = True) -> dict:
    """Run (or resume) the whole protocol and return the results dictionary (also written to OUT/runs).

    data_section: `prompts.schema.DataSection` (data, split); seg: `prompts.schema.SegmentSection`.
    Raises UserError (LeakError for leaks) before anything is written when an input is bad.
    """
    from tqdm import tqdm

    from .model import check_backbone, check_image_size, import_keras, normalize_weights

    t_start = time.perf_counter()
    check_backbone(seg.backbone)
    check_image_size(seg.image_size)
    w = normalize_weights(seg.weights)
    dataset, items, split, mixes, syn = load_inputs(data_section, seg)
    out = Path(seg.output)
    jobs = plan_jobs(items, split, mixes, syn, seg.seed)
    if w in ("tiny", "none"):
        log.warning(SMOKE_WARNING.format(w=w, narrow=" and a narrow decoder" if w == "tiny" else ""))
    import_keras()  # after every input check: a user error is not preceded by TensorFlow's start-up lines
    runner = Runner(seg, progress, data_section.masks, out, data_section.images_dir)
    current = run_fingerprint(items, split, syn, jobs, runner, seg)
    check_reuse(out, current, overwrite=seg.overwrite)
    todo, results = [], []
    for job in jobs:
        saved = _load_result(out / job.result_path)
        if saved is not None and saved.get("fingerprint") == runner.fingerprint(job):
            results.append(saved)
        else:
            todo.append(job)
    runner.cache.load([it for j in todo for it in (*j.train, *j.test)], progress)
    if todo and seg.model == "unet":
        runner.trainer  # noqa: B018 - built before anything is written, so a bad weights file writes nothing
    fingerprint.write(out / FINGERPRINT_FILE, current)
    if not data_section.split:
        write_split(split.path, split)
    first = split.folds[0].index
    bar = tqdm(todo, desc="folds x mixes", unit="run", disable=not progress or not todo)
    for job in bar:
        bar.set_postfix_str(f"{job.tree} {job.mix.name} {job.fold.name}")
        overlay_dir = out / OVERLAYS_DIR / job.tree / job.mix.name / fold_name(first) if job.fold.index == first else None
        res = runner.run(job, overlay_dir)
        res["overlays"] = [Path(p).relative_to(out).as_posix() for p in res["overlays"]]
        write_json_atomic(out / job.result_path, res)
        results.append(res)
    summary = summarize(results, dataset, split, mixes, syn, seg)
    summary["timing"] = {"seconds_total": round(time.perf_counter() - t_start, 2), "runs_trained": len(todo),
                         "runs_reused": len(jobs) - len(todo)}
    return summary


def run_fingerprint(items: dict[str, PairItem], split: Split, syn: SyntheticPairs | None, jobs: list[Job], runner, seg) -> dict:
    """What determines a CV run's results: settings, initial network, data pairs, split, synthetic trees."""
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
    return fingerprint.make(**parts, weights=weights_id(seg.weights), model=runner.key, data=data, split=folds,
                            synthetic=synthetic, metrics=metrics.METRICS_VERSION)


def check_reuse(out: Path, current: dict, overwrite: bool) -> None:
    """Refuse to mix results of other inputs into OUT, or to replace files it did not write, unless overwrite."""
    path = out / FINGERPRINT_FILE
    recorded = fingerprint.read(path) if path.exists() else None
    if not path.exists() and not overwrite:
        ours = [n for n in _OUTPUT_NAMES if (out / n).exists()]
        if ours:
            raise UserError(f"--output {out} already holds {ours[0]} but no {FINGERPRINT_FILE} of a segmentation CV run; "
                            "pass --overwrite (segment.overwrite: true) to replace it or choose another --output")
    if recorded is not None and not overwrite:
        fingerprint.check(recorded, current, f"the segmentation CV run in {out}",
                          "pass --overwrite (segment.overwrite: true) to recompute it there (runs whose own inputs did not "
                          "change are reused) or choose another --output")


def _load_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------- summary


def summarize(results: list[dict], dataset, split: Split, mixes: list[Mix], syn, seg) -> dict:
    """Mean/std over folds per (tree, mix), the paired comparison with `real`, Holm over the family, verdicts."""
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in results:
        by.setdefault((r["tree"], r["mix"]), {})[r["fold"]] = r
    names = (syn.names if syn else []) or [REAL_TREE]
    n_train = float(np.mean([len(f.train) for f in split.folds]))
    n_test = float(np.mean([len(f.test) for f in split.folds]))
    real_runs = by.get((REAL_TREE, "real"), {})
    tables = {}
    for t in names:
        rows = []
        for mix in mixes:
            tree = t if mix.uses_synthetic else REAL_TREE
            runs = by.get((tree, mix.name), {})
            folds = sorted(runs)
            row = {"mix": mix.name, "tree": tree, "uses_synthetic": mix.uses_synthetic, "folds": folds, "metrics": {}, "vs_real": {}}
            for m in metrics.METRICS:
                vals = [runs[k]["metrics"][m] for k in folds]
                mean, std = stats.mean_std(vals)
                row["metrics"][m] = {"mean": mean, "std": std, "folds": vals}
                if real_runs and mix.name != "real":
                    vs = stats.paired_vs_real(runs, real_runs, m, n_train, n_test)
                    lo, hi = stats.corrected_interval(vs["diff_mean"], vs["diff_std"], len(vs["diffs"]), n_train, n_test, 0.95)
                    row["vs_real"][m] = {"diff_mean": vs["diff_mean"], "diff_std": vs["diff_std"], "t": vs["t"], "p": vs["p"],
                                         "ci": [lo, hi], "j": len(vs["diffs"]), "diffs": vs["diffs"]}
            row["synthetic_fraction"] = float(np.mean([runs[k]["synthetic_fraction"] for k in folds])) if folds else 0.0
            row["leaky_folds"] = [k for k in folds if runs[k].get("leaky")]
            row["shortfall"] = int(sum(runs[k].get("shortfall", 0) for k in folds))
            row["overlays"] = next((runs[k].get("overlays", []) for k in folds if runs[k].get("overlays")), [])
            row["per_set"] = pooled_sets([runs[k] for k in folds])
            rows.append(row)
        tables[t] = rows
    floor = floor_summary(list(real_runs.values()))
    learned = learning_check(tables, floor, seg.model)
    if learned is None:
        _add_verdicts(tables, n_train, n_test, split.n_splits, seg.delta)
    return {
        "model": seg.model, "floor": floor, "not_learned": learned,
        "training": next((r.get("training") for r in results if r.get("training")), None),
        "version": 1, "task": "segmentation", "data": str(dataset.root),
        "split": str(split.path) if split.path else None, "group_by": split.group_by,
        "synthetic": str(syn.root) if syn else None, "synthetic_per_fold": sorted(syn.per_fold) if syn else [],
        "n_pairs": len(dataset.records), "n_folds": len(split.folds), "n_splits": split.n_splits, "repeats": split.repeats,
        "n_train_mean": n_train, "n_test_mean": n_test, "primary": PRIMARY,
        "settings": dataclasses.asdict(seg), "tables": tables,
        "runs": [{k: v for k, v in r.items() if k not in ("losses", "test")} for r in results],
    }


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


def _add_verdicts(tables: dict, n_train: float, n_test: float, k_folds: int, delta: float) -> None:
    """One Holm family over every synthetic mix of every tree on the primary metric; a verdict per row (in place).

    The rule is `analysis.verdicts` (shared with `classify cv`): equivalent within ±delta by TOST first, then
    helps / hurts by the Holm-adjusted corrected t-test, else inconclusive with the CV repeats that would settle it.
    """
    from analysis.verdicts import decide_family

    family = {f"{r['tree']}/{r['mix']}": r for rows in tables.values() for r in rows
              if r["uses_synthetic"] and PRIMARY in r["vs_real"]}
    verdicts = decide_family({k: r["vs_real"][PRIMARY]["diffs"] for k, r in family.items()}, n_train, n_test,
                             delta=delta, folds=k_folds)
    for key, v in verdicts.items():
        r = family[key]
        r["vs_real"][PRIMARY]["p_holm"] = v.p_holm
        r["verdict"] = dataclasses.asdict(v)
