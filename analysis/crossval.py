"""The cross-validation protocol every task runs: written once, so that a guarantee holds for every task.

`run(task)` reads top to bottom:
1. check the output folder (never inside the data, not a file, writable); read the task's items, the
   split (read, or made by the one `prompts.splits.make_split`), the mixes (the one grammar of
   `prompts.mixes`, in the task's vocabulary) and the synthetic trees;
2. plan the jobs: mixes x folds (x repeats) x synthetic trees, each job's training set drawn with a
   seed of its own, every job checked for leaks (a synthetic item that is a test item of its fold);
3. fingerprint the run and each job, always with the reading rule (`data.normalize`, channels, z, t);
   compare with what OUT holds: other inputs are refused unless --overwrite, and then only the jobs
   whose own inputs changed are recomputed;
4. claim OUT's outputs as the toolkit's (`prompts.fingerprint.claim`), then record the fingerprint
   and the split;
5. train and score each job left to do (progress bar), saving each result atomically at once (a
   killed run resumes where it stopped);
6. summarise: mean and spread over folds per (tree, mix), each mix paired with `real` on the same
   folds (`analysis.stats.paired_vs_real`, the corrected t-test), and the task's results record
   (verdicts over Holm families, flags).

A task supplies only what differs (`Task` below): its items, `train_and_score(job)`, its metric names
and primary metric, its mix vocabulary, and what its results record and report hold. Three choices are the
task's and default to classification's: `baseline` (the mix every other mix is compared with, `real`),
`lower_is_better` (metrics where a smaller value is better: verdicts are about the improvement), and `arms`
(models compared side by side on the same jobs' training sets; one unnamed arm by default). Nothing here
imports TensorFlow: a task does that in `start`, after every input check, so a bad input is one line.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import stats
from prompts import fingerprint
from prompts.errors import UserError
from prompts.files import write_json_atomic
from prompts.guard import check_output_dir
from prompts.layout import FINGERPRINT_FILE, RUNS_DIR, SPLIT_FILE, fold_name
from prompts.mixes import Mix, parse_mixes
from prompts.splits import Fold, Split, make_split, read_split, write_split

log = logging.getLogger(__name__)

REAL_TREE = "real"  # the tree name of mixes that use no synthetic items
# what a mix's comparison with `real` may record, in this order; a task picks its fields (Task.vs_real_fields)
VS_REAL_FIELDS = ("diff_mean", "diff_std", "t", "p", "min_significant_diff", "ci", "j", "diffs")


# ---------------------------------------------------------------- what a task supplies


@dataclass
class Inputs:
    """What a run reads before any job: the task's items as a dataset, the split, the mixes, the synthetic set.

    `synthetic` is the task's own object (or None); the protocol reads only its `names` (the tree names,
    e.g. LoRA weights), `root` and `per_fold`.
    """

    dataset: Any  # prompts.dataset.Dataset: the items' paths and classes (what the split is made over)
    split: Split
    mixes: list[Mix]
    synthetic: Any = None
    split_made: bool = False  # made here: written to OUT/split.json

    @property
    def tree_names(self) -> list[str]:
        """The synthetic trees a synthetic mix runs on, once each ([] without a synthetic set)."""
        return list(self.synthetic.names) if self.synthetic is not None else []


@dataclass
class SyntheticTrees:
    """A synthetic folder's trees by name: each fold's own (`fold_<k>/<name>/`) and shared ones (`<name>/`).

    A fold uses its own tree; a shared tree stands in for a fold without one, knowingly: its generator may
    have seen the fold's test items, so its jobs are marked leaky. A task subclasses this for its tree type,
    its name order (`order`) and its line for a missing tree (`missing`).
    """

    root: Path
    shared: dict = field(default_factory=dict)  # name -> tree
    per_fold: dict = field(default_factory=dict)  # fold index -> name -> tree

    @property
    def names(self) -> list[str]:
        """Every tree name once, in the task's order."""
        names = set(self.shared)
        for trees in self.per_fold.values():
            names |= set(trees)
        return sorted(names, key=self.order)

    def order(self, name: str):
        return name

    def tree(self, fold_index: int, name: str):
        """(the tree for this fold, leaky): the fold's own tree, else the shared one (leaky); else a UserError."""
        own = self.per_fold.get(fold_index, {}).get(name)
        if own is not None:
            return own, False
        if name in self.shared:
            return self.shared[name], True
        raise UserError(self.missing(fold_index, name))

    def missing(self, fold_index: int, name: str) -> str:
        fold = fold_name(fold_index)
        return f"synthetic folder {self.root} has no {name}/ tree for {fold} and no shared {name}/; generate {fold}/{name}/"

    def trees(self) -> list:
        """Every tree, shared ones first."""
        return [*self.shared.values(), *(t for _, by in sorted(self.per_fold.items()) for t in by.values())]


@dataclass
class FoldTree:
    """A fold's view of one synthetic tree: its items, whether the generator saw the fold's test items."""

    items: list
    leaky: bool = False
    root: Path | None = None
    checked: bool = True  # its record of what the generator was trained on was found (or it is knowingly leaky)


NO_TREE = FoldTree([])


@dataclass
class Job:
    """One training run: a fold, a mix, and the synthetic tree it draws from (or REAL_TREE)."""

    fold: Fold
    mix: Mix
    tree: str
    train: list
    test: list
    shortfall: Any = field(default_factory=dict)  # synthetic items wanted but missing: {class: n} or a count
    leaky: bool = False
    synthetic_root: str | None = None  # the tree's folder the synthetic items came from
    fingerprint: str = ""  # set by `run` before the job trains: the identity its saved result carries
    arm: str = ""  # the model of a task that compares several side by side (Task.arms); "" for one

    @property
    def result_path(self) -> Path:
        arm = (self.arm,) if self.arm else ()
        return Path(RUNS_DIR, *arm) / self.tree / self.mix.name / f"{self.fold.name}.json"


class Task:
    """What one task (classification, segmentation, ...) adds to the protocol. Subclass it and fill in each part.

    Settings (`section`: the task's study section, e.g. `ClassifySection`; `data`: the `data` section) are
    read by the protocol for `output`, `overwrite`, `folds`, `repeats`, `group_by`, `seed`, `mixes`, and
    `data.data`, `data.split`.
    """

    # -- names: how messages, records and claims name the task
    command = ""  # "classify cv": who wrote OUT's files (prompts.fingerprint.claim)
    section_name = ""  # "classify": the study section, for "--overwrite (classify.overwrite: true)"
    run_name = "CV run"  # "the CV run in OUT was made from other inputs"
    noun = "images"  # what the synthetic folder holds, for "mixes ... need synthetic images"
    generator = "python -m generate"  # the command that writes the synthetic folder
    output_names: tuple[str, ...] = ()  # what the task writes into OUT (besides fingerprint.json)
    # -- metrics and mixes
    metrics: tuple[str, ...] = ()  # the per-fold metrics in a result's "metrics", summarised per mix
    primary = ""  # the metric the verdicts are about
    vocabulary: tuple[str, ...] = ()  # prompts.mixes.CLASSIFICATION, SEGMENTATION, ...
    vs_real_fields: tuple[str, ...] = ("diff_mean", "diff_std", "t", "p")  # of VS_REAL_FIELDS
    bulky: tuple[str, ...] = ()  # result fields left out of the results record's "runs" (predictions, losses)
    baseline = "real"  # the mix (without synthetic items) every other mix is compared with
    lower_is_better: frozenset = frozenset()  # metrics where smaller is better (errors): verdicts use baseline - mix
    arms: tuple[str, ...] = ("",)  # models run side by side on every job's training set; ("",): one, unnamed
    # True when item keys hash the pixels as decoded under the reading rule: the rule then reaches every job's
    # fingerprint through its items; otherwise `run` adds the rule to each job's fingerprint itself
    keys_read_pixels = False
    unchecked_warning = ("%d synthetic tree(s) have no record of what their generator was trained on, e.g. %s: "
                         "cannot check that they never saw their fold's test items")

    def __init__(self, data, section, progress: bool = True):
        self.data, self.section, self.progress = data, section, progress

    @functools.cached_property
    def reading(self):
        """The rule every real image of this run is read with: the `data` section's (`prompts.normalize.Reading`),
        passed to every decoder call and recorded in the run's and every job's fingerprint."""
        from prompts.normalize import from_section

        return from_section(self.data)

    # -- items
    def read_items(self):
        """The task's items as a `prompts.dataset.Dataset` (paths data-relative, one class each). Writes nothing."""
        raise NotImplementedError

    def read_synthetic(self, mixes: list[Mix]):
        """The synthetic set the mixes draw from (an object with `names`, `root`, `per_fold`, or None)."""
        raise NotImplementedError

    def fold_items(self, fold: Fold) -> tuple[list, list]:
        """(real training items, test items) of a fold."""
        raise NotImplementedError

    def tree_items(self, fold: Fold, name: str) -> FoldTree:
        """A synthetic tree as the fold sees it (the fold's own tree, or a shared one marked leaky)."""
        raise NotImplementedError

    def training_set(self, mix: Mix, real: list, synthetic: list, rng: np.random.Generator) -> tuple[list, Any]:
        """(training items of the mix, shortfall)."""
        raise NotImplementedError

    def check_no_leak(self, job: Job) -> None:
        """Raise a UserError when a synthetic training item is a test item of the job's fold."""
        raise NotImplementedError

    def check_split(self, split: Split) -> None:
        """The task's own demands on the folds (e.g. k training items in every fold); a UserError when unmet."""

    def job_seed(self, fold: Fold, mix: Mix, tree: str) -> list[int]:
        """The seed a job's training set is drawn with: its own per (fold, mix, tree) by default. A task whose
        mixes are nested (k = 1 inside k = 2) shares one draw per fold instead."""
        return [self.section.seed, fold.index, zlib.crc32(mix.name.encode()), zlib.crc32(tree.encode())]

    # -- training
    def start(self, inputs: Inputs, jobs: list[Job]) -> None:
        """After every input check: warnings about the settings, Keras, what every job shares. Writes nothing."""

    def fingerprint_parts(self, inputs: Inputs, jobs: list[Job]) -> dict:
        """The run's fingerprint parts (settings.<key>, model, data, split, synthetic, metrics); the reading is added."""
        raise NotImplementedError

    def job_fingerprint(self, job: Job) -> str:
        """A digest of what determines one job's result (settings, model, mix, its items)."""
        raise NotImplementedError

    def prepare(self, todo: list[Job]) -> None:
        """Before anything is written: what the jobs left to do need (features, pixels); a bad model stops here."""

    def train_and_score(self, job: Job) -> dict:
        """Train on job.train, test on job.test -> the job's result record (with "fold", "tree", "mix", "metrics")."""
        raise NotImplementedError

    def timing(self) -> dict:
        """Extra timings for the results record (seconds)."""
        return {}

    # -- summary
    def row_fields(self, runs: list[dict]) -> dict:
        """The task's own fields of a (tree, mix) row, from its runs in fold order."""
        return {}

    def results(self, inputs: Inputs, common: dict, tables: dict, runs: list[dict]) -> dict:
        """The results record (results.json's contract): `common` and the tables, with the task's verdicts and flags."""
        raise NotImplementedError


# ---------------------------------------------------------------- provenance: what a tree's generator saw


def read_tree_record(candidates: list[Path], rerun: str) -> tuple[Path, dict] | None:
    """(file, record) of the first fingerprint that exists among `candidates` (a tree's own, then its folders');
    None when none does. An unreadable one is a UserError that says to re-run `rerun`."""
    for f in candidates:
        if f.is_file():
            rec = fingerprint.read(f)
            if rec is None:
                raise UserError(f"{f} is not a readable fingerprint (JSON); re-run `{rerun}` for this tree")
            return f, rec
    return None


def recorded_files(record_file: Path, record: dict, keys: tuple[str, ...], rerun: str) -> dict[str, str]:
    """{data-relative path: sha256} of the files a generator was trained on, from the record's `keys` parts."""
    out: dict[str, str] = {}
    for key in keys:
        part = record.get(key, {})
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in part.items()):
            raise UserError(f"{record_file}: '{key}' must map data-relative paths to sha256 hex digests; re-run `{rerun}`")
        out.update(part)
    return out


def find_test_file(used: dict[str, str], test: dict[str, str]) -> tuple[str, str] | None:
    """The first test file a generator was trained on, by path or by content (a renamed copy is caught).

    Parameters
    ----------
    used, test : dict
        {data-relative path: sha256} of the generator's training files and of the fold's test files.

    Returns
    -------
    (str, str) or None
        (the test file's path, "" or " (as <path>, same content)"), None when it saw none.
    """
    by_hash = {h: p for p, h in test.items()}
    for path, sha in sorted(used.items()):
        hit = path if path in test else by_hash.get(sha)
        if hit is not None:
            return hit, "" if hit == path else f" (as {path}, same content)"
    return None


# ---------------------------------------------------------------- the protocol


def run(task: Task) -> dict:
    """Run (or resume) the whole protocol for a task; returns the results record (each run is also in OUT/runs).

    Raises UserError (one line) before anything is written when an input is bad.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    inputs = read_inputs(task)
    out = Path(task.section.output)
    jobs = plan_jobs(task, inputs)
    task.start(inputs, jobs)
    current = fingerprint.make(**task.fingerprint_parts(inputs, jobs), reading=fingerprint.reading_part(task.reading))
    check_reuse(task, out, current)
    todo, results = [], []
    for job in jobs:
        job.fingerprint = job_fingerprint(task, job)
        saved = _load_result(out / job.result_path)
        if saved is not None and saved.get("fingerprint") == job.fingerprint:
            results.append(saved)
        else:
            todo.append(job)
    task.prepare(todo)
    fingerprint.claim(out, (*task.output_names, FINGERPRINT_FILE), task.command)  # only once every input checked out
    fingerprint.write(out / FINGERPRINT_FILE, current)
    if inputs.split_made:
        write_split(inputs.split.path, inputs.split)
    bar = tqdm(todo, desc="folds x mixes", unit="run", disable=not task.progress or not todo)
    for job in bar:
        bar.set_postfix_str(f"{job.tree} {job.mix.name} {job.fold.name}")
        res = task.train_and_score(job)
        write_json_atomic(out / job.result_path, res)
        results.append(res)
    summary = summarize(task, inputs, results)
    summary["timing"] = {"seconds_total": round(time.perf_counter() - t_start, 2), **task.timing(),
                         "runs_trained": len(todo), "runs_reused": len(jobs) - len(todo)}
    return summary


def read_inputs(task: Task) -> Inputs:
    """The items, the split (read, or made: `run` writes it to OUT/split.json), the mixes, the synthetic set.

    Writes nothing: OUT is only checked (never inside the data folder, not a file).
    """
    data, s = task.data, task.section
    if not data.data:
        raise UserError("no data folder: pass --data DIR (or data.data in --config)")
    out = check_output_dir(s.output, data=data.data)
    dataset = task.read_items()
    if data.split:
        split, made = read_split(data.split, dataset), False
    else:
        split, made = make_split(dataset, s.folds, s.repeats, s.group_by, s.seed), True
        split.path = out / SPLIT_FILE
    task.check_split(split)
    mixes = parse_mixes(s.mixes, task.vocabulary)
    syn = task.read_synthetic(mixes)
    if syn is None and any(m.uses_synthetic for m in mixes):
        need = ", ".join(m.name for m in mixes if m.uses_synthetic)
        raise UserError(f"mixes {need} need synthetic {task.noun}: pass --synthetic DIR (written by `{task.generator}`) "
                        "or drop them from --mixes")
    return Inputs(dataset, split, mixes, syn, made)


def plan_jobs(task: Task, inputs: Inputs) -> list[Job]:
    """Every (tree, mix, fold) job with its training and test items, leak-checked, once per arm (`Task.arms`).

    Each job draws its training set with `Task.job_seed` ([seed, fold, crc32(mix), crc32(tree)] by default): the
    same job draws the same items whatever else the run holds, and every arm trains on that same set. Trees
    without a record of what their generator saw are named in one warning; shared trees stand in knowingly and
    are marked leaky.
    """
    trees = inputs.tree_names if any(m.uses_synthetic for m in inputs.mixes) else []
    unchecked: list[Path] = []
    jobs = []
    for fold in inputs.split.folds:
        real, test = task.fold_items(fold)
        synthetic = {name: task.tree_items(fold, name) for name in trees}
        unchecked += [t.root for t in synthetic.values() if not t.checked]
        for mix in inputs.mixes:
            for name in (trees if mix.uses_synthetic else [REAL_TREE]):
                tree = synthetic[name] if mix.uses_synthetic else NO_TREE
                rng = np.random.default_rng(task.job_seed(fold, mix, name))
                train, shortfall = task.training_set(mix, real, tree.items, rng)
                root = str(tree.root) if tree.root else None
                arms = [Job(fold, mix, name, train, test, shortfall, tree.leaky, root, arm=arm) for arm in task.arms]
                task.check_no_leak(arms[0])  # every arm has the same training and test items
                jobs += arms
    if unchecked:
        log.warning(task.unchecked_warning, len(unchecked), unchecked[0])
    return jobs


def job_fingerprint(task: Task, job: Job) -> str:
    """The identity a job's saved result must carry to be reused: the task's digest, and the reading rule."""
    own = task.job_fingerprint(job)
    return own if task.keys_read_pixels else fingerprint.digest({"job": own, "reading": fingerprint.reading_part(task.reading)})


def check_reuse(task: Task, out: Path, current: dict) -> None:
    """Refuse to mix results of other inputs into OUT, or to replace files it did not write, unless --overwrite.

    With --overwrite, runs whose own inputs did not change are still reused (each run carries its own
    fingerprint); only the report reflects the new inputs.
    """
    overwrite, path = task.section.overwrite, out / FINGERPRINT_FILE
    again = f"pass --overwrite ({task.section_name}.overwrite: true)"
    recorded = fingerprint.read(path) if path.exists() else None
    if not path.exists() and not overwrite:
        ours = [n for n in task.output_names if (out / n).exists()]
        if ours:
            raise UserError(f"--output {out} already holds {ours[0]} but no {FINGERPRINT_FILE} of a {task.run_name}: it was "
                            f"not written by this version of `{task.command}`; {again} to replace it or choose another --output")
    if recorded is not None and not overwrite:
        fingerprint.check(recorded, current, f"the {task.run_name} in {out}",
                          f"{again} to recompute it there (runs whose own inputs did not change are reused) "
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


# ---------------------------------------------------------------- summary


def summarize(task: Task, inputs: Inputs, results: list[dict]) -> dict:
    """The results record: the tables (`summary_tables`), what every task records about the run, the task's part."""
    split, syn = inputs.split, inputs.synthetic
    tables, n_train, n_test = summary_tables(task, inputs, results)
    common = {
        "data": str(inputs.dataset.root),
        "split": str(split.path) if split.path else None,
        "group_by": split.group_by,
        "synthetic": str(syn.root) if syn is not None else None,
        "synthetic_per_fold": sorted(syn.per_fold) if syn is not None else [],
        "n_folds": len(split.folds),
        "n_splits": split.n_splits,
        "repeats": split.repeats,
        "n_train_mean": n_train,
        "n_test_mean": n_test,
        "reading": fingerprint.reading_part(task.reading),  # the rule every image was read with: reports state it
    }
    runs = [{k: v for k, v in r.items() if k not in task.bulky} for r in results]
    return task.results(inputs, common, tables, runs)


def table_name(arm: str, tree: str) -> str:
    """The key of an arm's tree in the summary tables: the tree's name, `<arm>/<tree>` when the task has arms."""
    return f"{arm}/{tree}" if arm else tree


def summary_tables(task: Task, inputs: Inputs, results: list[dict]) -> tuple[dict[str, list[dict]], float, float]:
    """({tree: [row per mix]}, mean training size, mean test size): each row summarises a (tree, mix) over folds.

    A row holds each metric's mean, std (ddof 1) and per-fold values, and each metric minus the baseline mix
    (`Task.baseline`, `real`; key "vs_real") paired over the folds both ran on (Nadeau-Bengio corrected t-test),
    the synthetic fraction, the task's own fields, the folds whose tree was leaky and the total shortfall. Mixes
    without synthetic items appear in every tree's table. With arms (`Task.arms`), each arm has its own tables
    (`table_name`), its rows name it ("arm") and are compared with the same arm's baseline.
    """
    by: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in results:
        by.setdefault((r.get("arm", ""), r["tree"], r["mix"]), {})[r["fold"]] = r
    split = inputs.split
    n_train = float(np.mean([len(f.train) for f in split.folds]))
    n_test = float(np.mean([len(f.test) for f in split.folds]))
    tables = {}
    for arm in task.arms:
        real_runs = by.get((arm, REAL_TREE, task.baseline))
        for t in inputs.tree_names or [REAL_TREE]:
            tables[table_name(arm, t)] = _rows(task, inputs, by, arm, t, real_runs, n_train, n_test)
    return tables, n_train, n_test


def _rows(task: Task, inputs: Inputs, by: dict, arm: str, t: str, real_runs: dict | None, n_train: float,
          n_test: float) -> list[dict]:
    """The rows of one arm's tree table (see `summary_tables`)."""
    rows = []
    for mix in inputs.mixes:
        tree = t if mix.uses_synthetic else REAL_TREE
        runs = by.get((arm, tree, mix.name), {})
        folds = sorted(runs)
        row = {"mix": mix.name, "tree": tree, **({"arm": arm} if arm else {}), "uses_synthetic": mix.uses_synthetic,
               "folds": folds, "metrics": {}, "vs_real": {}}
        for m in task.metrics:
            vals = [runs[k]["metrics"][m] for k in folds]
            mean, std = stats.mean_std(vals)
            row["metrics"][m] = {"mean": mean, "std": std, "folds": vals}
            if real_runs and mix.name != task.baseline:
                row["vs_real"][m] = vs_real(task, runs, real_runs, m, n_train, n_test)
        row["synthetic_fraction"] = float(np.mean([runs[k]["synthetic_fraction"] for k in folds])) if folds else 0.0
        row.update(task.row_fields([runs[k] for k in folds]))
        row["leaky_folds"] = [k for k in folds if runs[k].get("leaky")]
        row["shortfall"] = total_shortfall([runs[k].get("shortfall") for k in folds])
        rows.append(row)
    return rows


def vs_real(task: Task, runs: dict, real_runs: dict, metric: str, n_train: float, n_test: float) -> dict:
    """One metric of a mix minus `real`, paired over common folds: the task's choice of `VS_REAL_FIELDS`."""
    vs = stats.paired_vs_real(runs, real_runs, metric, n_train, n_test)
    j = len(vs["diffs"])
    found = {**vs, "j": j}
    if "min_significant_diff" in task.vs_real_fields:
        found["min_significant_diff"] = stats.critical_difference(vs["diff_std"], j, n_train, n_test)
    if "ci" in task.vs_real_fields:
        found["ci"] = list(stats.corrected_interval(vs["diff_mean"], vs["diff_std"], j, n_train, n_test, 0.95))
    return {k: found[k] for k in VS_REAL_FIELDS if k in task.vs_real_fields}


def total_shortfall(values: list):
    """Synthetic items wanted but missing, summed over folds: a count, or per class ({class: n})."""
    if values and all(isinstance(v, int) for v in values):
        return int(sum(values))
    total: dict[str, int] = {}
    for v in values:
        for c, n in (v or {}).items():
            total[c] = total.get(c, 0) + n
    return total


def holm_verdicts(tables: dict, primary: str, n_train: float, n_test: float, k_folds: int, delta: float, *,
                  baseline: str = "real", lower_is_better: bool = False) -> None:
    """A verdict per row against the baseline on the primary metric, in place (`row["verdict"]`, `vs_real[primary]["p_holm"]`).

    Families (Holm within each): every synthetic mix of every tree (and arm); the mixes without synthetic items.
    A row is compared with its own arm's baseline row. The verdict is about the improvement: mix - baseline, or
    baseline - mix when `lower_is_better` (an error), so "helps" always means better. The rule is
    `analysis.verdicts`: equivalent within ±delta by TOST first, then helps / hurts by the Holm-adjusted
    corrected t-test, else inconclusive with the CV repeats that would settle it.
    """
    from dataclasses import asdict

    from analysis.verdicts import decide_family

    bases: dict[str, dict] = {}
    for rows in tables.values():
        for r in rows:
            if r["mix"] == baseline:
                bases.setdefault(r.get("arm", ""), r)
    for synthetic in (True, False):
        family = {_row_key(r): r for rows in tables.values() for r in rows
                  if r["uses_synthetic"] == synthetic and r["mix"] != baseline and primary in r["vs_real"]
                  and r.get("arm", "") in bases}
        if not family:
            continue
        diffs = {k: improvements(r, bases[r.get("arm", "")], primary, lower_is_better) for k, r in family.items()}
        verdicts = decide_family(diffs, n_train, n_test, delta=delta, folds=k_folds)
        for key, v in verdicts.items():
            family[key]["vs_real"][primary]["p_holm"] = v.p_holm
            family[key]["verdict"] = asdict(v)


def _row_key(row: dict) -> str:
    """`tree/mix`, `arm/tree/mix` with arms: a row's name in its Holm family."""
    return f"{table_name(row.get('arm', ''), row['tree'])}/{row['mix']}"


def paired_diffs(row: dict, real: dict, metric: str) -> list[float]:
    """metric(mix) - metric(real) on each fold both rows ran on, in fold order (as `stats.paired_vs_real` pairs them).

    A fold where either value is not finite (e.g. a relative error with nothing to count) says nothing: skipped."""
    mine = dict(zip(row["folds"], row["metrics"][metric]["folds"]))
    theirs = dict(zip(real["folds"], real["metrics"][metric]["folds"]))
    return [mine[k] - theirs[k] for k in sorted(mine) if k in theirs and np.isfinite(mine[k]) and np.isfinite(theirs[k])]


def improvements(row: dict, base: dict, metric: str, lower_is_better: bool = False) -> list[float]:
    """Per-fold improvement of a row over the baseline row (`paired_diffs`, negated when lower is better):
    positive always means better."""
    diffs = paired_diffs(row, base, metric)
    return [-d for d in diffs] if lower_is_better else diffs


def write_results(out, record: dict, csv_text: str) -> list[Path]:
    """Write the results record as OUT/results.json and the task's table as OUT/results.csv, each atomically.

    Parameters
    ----------
    out : path
        The output folder (claimed by `run`).
    record : dict
        The results record (`run`'s return value, with what the report adds).
    csv_text : str
        The task's results.csv (one row per table row).

    Returns
    -------
    list of Path
        [results.json, results.csv]
    """
    from prompts.files import write_text_atomic
    from prompts.layout import RESULTS_CSV, RESULTS_JSON

    paths = [Path(out) / RESULTS_JSON, Path(out) / RESULTS_CSV]
    write_json_atomic(paths[0], record)
    write_text_atomic(paths[1], csv_text)
    return paths
