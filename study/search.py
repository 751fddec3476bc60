"""`python -m study search`: search LoRA parameters for realism with Optuna (TPE sampler, median pruner).

One trial = one set of parameters (rank, alpha/rank, learning rates, epochs, network
preset, sampling weight), class by class on one fold of the split:

1. train the class's LoRA on the fold's *training* images (`lora.train.run`);
2. generate M images of the class (generate's Python API, in process; images that come out
   NaN or black raise `generate.sample.BadImages`: the trial is marked FAIL, the search goes on);
3. score them against the fold's *test* images of the class, never seen by the LoRA,
   on the classifier's frozen features (`classify.realism`: KID and the two-sample
   classifier test), and report the running mean to the pruner.

The objective of a class, lower is better, 0 when real and synthetic cannot be told apart:

    objective_c = log(1 + max(KID_c, 0)) + 2 |C2ST_c - 0.5|

KID and C2ST are `classify.realism.realism_scores`, the very function `classify realism`
writes the report's realism table with: the search picks its setting on the measure the
report shows (a test scores the same images through both paths). The page shows, per class,
KID_ref: the KID between the class's test images and the other classes' test images, the
size of a real difference.
KID is unbiased and dips below 0 by chance (or when images are copied), hence the clamp;
log(1 + x) equals x near 0 and keeps far-off trials (noise images) on a readable scale.
The two-sample accuracy lies in [0.5, 1] when its classifier works, so 2 |acc - 0.5|
lies in [0, 1]: KID ranks far-off trials, the two-sample test the close ones. The
trial's objective is the mean over classes; the value reported after each class is the
running mean, which the median pruner compares with earlier trials at the same class.

Storage and processes: a journal file (OUT/search.journal) by default, or any URL
Optuna accepts (sqlite:///..., postgresql://...), shared by several processes or
machines. Each process starts a trial only while fewer than N trials are COMPLETE
or RUNNING, so together they finish N complete trials. A RUNNING trial records its
host, process id and a heartbeat; a trial whose process is gone (same host) or whose
heartbeat is older than STALE_SECONDS (another host) is marked FAIL by the next
process that looks, and its folder removed: a search killed with kill -9 resumes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prompts.config import Study, load_study
from prompts.errors import UserError
from prompts.files import write_json_atomic
from prompts.normalize import from_section
from prompts.schema.search import SPACE_KEYS

from .trials import (  # noqa: F401  (names the search's callers and tests read from here)
    BEST_DIR,
    BEST_FILE,
    HTML_FILE,
    STORAGE_FILE,
    TABLE_FILE,
    TINY_MODEL_DIR,
    TRIAL_SCORES,
    TRIAL_STUDY,
    TRIALS_DIR,
    best_study,
    class_objective,
    trial_study,
    write_trial_study,
)

log = logging.getLogger("study.search")

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # a RUNNING trial of another host without a heartbeat this long is failed
POLL_SECONDS = 5.0  # wait between looks while the other processes' trials fill the N
DIVERGED_IN_A_ROW = 5  # this many diverged trials in a row stop the search: the space itself is at fault


# --------------------------------------------------------------------------- the search space

@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a list of choices, or a range [low, high] (log-uniform, or with a step)."""

    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*\.\.\s*({_NUM})\s*(?:(log)|step\s+({_NUM}))?\s*$")
_INT_KEYS = ("rank", "epochs")
_STR_KEYS = ("network",)


def parse_dimension(name: str, value, where: str = "search") -> Dimension | None:
    """A search-space entry -> Dimension; None for [] (not searched). UserError names the key and the fix."""
    flag = f"{where}.{name}"
    integer = name in _INT_KEYS
    if isinstance(value, str) and ".." in value:
        m = _RANGE.match(value)
        if not m:
            raise UserError(f"{flag}: {value!r} is not a range; write 'LOW..HIGH', 'LOW..HIGH log' or 'LOW..HIGH step S'")
        if name in _STR_KEYS:
            raise UserError(f"{flag}: {value!r}: {name} takes a list of names, not a range")
        low, high, log_, step = float(m[1]), float(m[2]), bool(m[3]), float(m[4]) if m[4] else None
        if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise UserError(f"{flag}: {value!r}: {name} is an integer; give whole numbers")
        if not low < high:
            raise UserError(f"{flag}: {value!r}: LOW must be below HIGH")
        if log_ and low <= 0:
            raise UserError(f"{flag}: {value!r}: a log range needs LOW above 0")
        if step is not None and step <= 0:
            raise UserError(f"{flag}: {value!r}: the step must be above 0")
        return Dimension(name, low=low, high=high, log=log_, step=step, integer=integer)
    items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        return None
    out = []
    for v in items:
        if name in _STR_KEYS:
            out.append(str(v))
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise UserError(f"{flag}: {v!r} is not a number") from None
        if not math.isfinite(x):
            raise UserError(f"{flag}: {v!r} is not a finite number")
        if integer and not x.is_integer():
            raise UserError(f"{flag}: {v!r}: {name} is an integer")
        out.append(int(x) if integer else x)
    return Dimension(name, choices=tuple(dict.fromkeys(out)))


def search_space(search) -> list[Dimension]:
    """The searched dimensions of a `search` section, in SPACE_KEYS order."""
    from typing import get_args, get_type_hints

    from prompts.schema.lora import LoraSection

    dims = [d for key in SPACE_KEYS if (d := parse_dimension(key, getattr(search, key))) is not None]
    for d in dims:
        values = list(d.choices) if d.choices else [d.low, d.high]
        if d.name == "network":
            known = get_args(get_type_hints(LoraSection).get("network"))
            bad = [v for v in values if v not in known]
            if bad:
                raise UserError(f"search.network: {bad[0]!r} is not a network preset (known: {', '.join(known)})")
        elif d.name in ("rank", "epochs") and min(values) < 1:
            raise UserError(f"search.{d.name}: values must be at least 1")
        elif d.name in ("alpha_ratio", "unet_lr") and min(values) <= 0:
            raise UserError(f"search.{d.name}: values must be above 0")
        elif d.name == "text_encoder_lr" and min(values) < 0:
            raise UserError("search.text_encoder_lr: values must be 0 (U-Net only) or above")
    return dims


# --------------------------------------------------------------------------- storage and stale trials

def storage_url(search, out: Path) -> str:
    """The storage of the search: the given URL, or a journal path (absolute), default OUT/search.journal."""
    spec = search.storage or str(out / STORAGE_FILE)
    return spec if "://" in spec else str(Path(spec).resolve())


def open_storage(spec: str):
    """An Optuna storage: an RDB URL (contains '://') or a journal file (created on first use)."""
    import optuna

    if "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True} if not spec.startswith("sqlite") else
                                              {"connect_args": {"timeout": 60}})
        except Exception as err:  # bad URL, missing driver, unreachable server
            raise UserError(f"--storage {spec}: Optuna cannot open it ({' '.join(str(err).split())[:200]}); "
                            "give a journal file path or an RDB URL such as sqlite:///search.db") from None
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    _check_journal(Path(spec))
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(spec, lock_obj=JournalFileOpenLock(spec)))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise UserError(f"--storage {spec}: not a readable Optuna journal ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:120]}); it is left untouched: give another --storage, "
                        "or move it away to start the search over") from None


def _check_journal(path: Path) -> None:
    """A one-line UserError unless `path` is absent, empty, or whole lines of JSON objects (an Optuna journal).

    Checked before Optuna opens it: Optuna would append its own lines to a damaged file and then fail reading it.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    problem = None
    if data and not data.endswith(b"\n"):
        problem = "its last line is cut short"
    else:
        for i, line in enumerate(data.splitlines(), 1):
            try:
                ok = isinstance(json.loads(line.decode("utf-8")), dict) if line.strip() else True
            except (UnicodeDecodeError, ValueError):
                ok = False
            if not ok:
                problem = f"line {i} is not a JSON record"
                break
    if problem:
        raise UserError(f"--storage {path}: not a readable Optuna journal ({problem}); it is left untouched: "
                        "give another --storage, or move it away to start the search over")


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:  # no psutil, or no such process
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Whether process `pid` of this host still runs (and is the same process, when its start time was recorded)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_start = _process_start(pid)
    return started is None or now_start is None or abs(now_start - started) < 1.0


def fail_stale_trials(study, out: Path, now: float | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose process is gone; remove their folders. Returns their numbers."""
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") == host and "pid" in a:
            stale = not _alive(int(a["pid"]), a.get("pid_start"))
        else:
            beat = a.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
            stale = now - float(beat) > STALE_SECONDS
        if not stale:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another process failed it first
            continue
        shutil.rmtree(out / TRIALS_DIR / str(t.number), ignore_errors=True)
        log.warning("trial %d: its process (%s, pid %s) is gone; marked FAIL", t.number, a.get("host", "?"), a.get("pid", "?"))
        failed.append(t.number)
    return failed


class _Heartbeat:
    """Writes the trial's `heartbeat` user attribute every HEARTBEAT_SECONDS while the trial runs."""

    def __init__(self, trial):
        self.trial, self.stop = trial, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # the storage is briefly unavailable: the next beat will do
                log.debug("heartbeat of trial %d not written", self.trial.number)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# --------------------------------------------------------------------------- the fold's images and the scorer

@dataclass
class FoldImages:
    """A fold's images per class: `train` trains the LoRAs, `test` scores them (absolute paths)."""

    fold: int
    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    reading: object = None  # prompts.normalize.Reading: the data section's rule every image is read with (fold_images sets it)


def fold_images(data_section, fold: int) -> FoldImages:
    from prompts.dataset import read_dataset
    from prompts.splits import read_split

    if not data_section.split:
        raise UserError("the search needs a split file: run `python -m classify split --data DATA --output folds.json` "
                        "and pass --split folds.json (data.split); trials are scored on a fold's test images")
    reading = from_section(data_section)
    dataset = read_dataset(data_section.data, skip_bad_images=data_section.skip_bad_images, reading=reading)
    (f,) = read_split(data_section.split, dataset).select(fold)
    rec = dataset.by_path()

    def per_class(paths):
        out: dict[str, list[Path]] = {c: [] for c in dataset.classes}
        for p in paths:
            out[rec[p].label].append(dataset.root / p)
        return out

    return FoldImages(fold, per_class(f.train), per_class(f.test), reading)


class RealismScorer:
    """KID and two-sample accuracy of synthetic images against one fold's test images, per class.

    Features: the classify section's frozen backbone (global average pooling), cached on disk by
    image content (`classify.features`), so each real test image is seen by the backbone once;
    scores: `classify.realism.realism_scores`, as in the report.
    """

    def __init__(self, cls, images: FoldImages, cache_dir: Path):
        from classify.features import Extractor, FeatureCache
        from classify.model import build_base, model_key

        self.cls, self.images = cls, images
        self.cache = FeatureCache(cls.cache_dir or cache_dir, model_key(cls.backbone, cls.weights, cls.image_size, cls.seed))
        self.extractor = Extractor(lambda: build_base(cls.backbone, cls.weights, cls.image_size, seed=cls.seed),
                                   cls.image_size, cls.batch_size, cls.seed)
        self.kid_ref = {c: self._kid_ref(c) for c in images.test}

    def features(self, paths: list[Path]):
        """(len(paths), F) frozen features, in the order of `paths`."""
        from classify.features import PLAIN, ImageTable, compute_features, image_key

        table = ImageTable.from_paths(paths, self.images.reading)
        feats = compute_features(table, [PLAIN], self.cache, self.extractor, progress=False)[PLAIN]
        row = table.row()
        return feats[[row[image_key(p, self.images.reading)] for p in paths]]  # the table's keys: decoded pixels

    def _kid_ref(self, label: str) -> float:
        from classify.realism import kid

        others = [p for c, ps in self.images.test.items() if c != label for p in ps]
        if len(self.images.test[label]) < 2 or len(others) < 2:
            return float("nan")
        return kid(self.features(self.images.test[label]), self.features(others), seed=self.cls.seed)[0]

    def score(self, label: str, synthetic: list[Path]) -> dict:
        """Scores of one class's synthetic images, with the image lists they were computed on."""
        from classify.features import image_key
        from classify.realism import realism_scores

        real = self.images.test[label]
        leaked = set(map(str, real)) & {str(p) for ps in self.images.train.values() for p in ps}
        if leaked:  # the split guarantees this; checked because the objective's meaning depends on it
            raise RuntimeError(f"training image {sorted(leaked)[0]} among the test images of fold {self.images.fold}")
        if len(real) < 2 or len(synthetic) < 2:
            raise UserError(f"class {label}: fold {self.images.fold} has {len(real)} test image(s) and the trial made "
                            f"{len(synthetic)}; the scores need at least 2 of each (more test images, or a larger images_per_class)")
        reading = self.images.reading
        scores = realism_scores(self.features(real), self.features(synthetic), [image_key(p, reading) for p in real],
                                [image_key(p, reading) for p in synthetic], seed=self.cls.seed)
        return {"class": label, "kid": scores["kid"], "kid_ref": self.kid_ref[label], "c2st_accuracy": scores["c2st_accuracy"],
                "objective": class_objective(scores["kid"], scores["c2st_accuracy"]), "n_real": len(real),
                "n_synthetic": len(synthetic), "real_images": [str(p) for p in real],
                "synthetic_images": [str(p) for p in synthetic]}


# --------------------------------------------------------------------------- one trial

def _trial_settings(study: Study, search, params: dict, folder: Path) -> Study:
    """The trial's whole study: its parameters, its LoRA and image folders, fold, M images, fixed seeds."""
    s = trial_study(study, params)
    s.lora.output, s.lora.fold, s.lora.classes = str(folder / "lora"), search.fold, []  # per class: <n>/<class>/lora
    s.lora.validation_images, s.lora.overwrite = 0, False  # the scored images are its validation images
    g = s.generate
    g.model = g.model or s.lora.model
    g.lora, g.output, g.fold = s.lora.output, str(folder / "images"), str(search.fold)  # per class: <n>/<class>/images
    g.count, g.fraction, g.balance, g.classes = search.images_per_class, [], False, []
    g.seed, g.overwrite = search.seed, False  # the same seeds in every trial: trials differ by their parameters only
    return s


def _generate(s: Study, progress: bool = False) -> None:
    """Sample the images the study's `generate` section plans (generate's Python API, in this process).

    Images that come out NaN or black (`generate.sample.BadImages`) are what a diverged LoRA makes:
    the trial's outcome (TrialDiverged), not bad input. Any other UserError stops the search.
    """
    from generate.jobs import plan_jobs
    from generate.sample import BadImages, Settings, generate

    g = s.generate
    settings = dataclasses.replace(Settings.from_section(g, progress=progress), run_seed=g.seed)
    dataset, jobs, inputs = plan_jobs(g, s.data, g.seed, settings.sampler)
    try:
        generate(jobs, settings, dataset.root, None, inputs)
    except BadImages as err:
        raise TrialDiverged(f"generate: {err}") from None


def _synthetic_images(s: Study, images: Path, label: str) -> list[Path]:
    from prompts.layout import fold_root, weight_dir_name

    tree = fold_root(images, int(s.generate.fold)) / weight_dir_name(s.generate.lora_weights[0])
    return sorted(p for p in tree.rglob("*.png") if p.parent.name == label)


class TrialDiverged(Exception):
    """The trainer stopped because the loss or the LoRA weights stopped being finite: a result of the trial's parameters."""


def _train(cfg, data_section) -> None:
    """lora.train.run; a diverged run (too high a learning rate) is the trial's outcome, not bad input."""
    from lora.train import Diverged, run

    try:
        run(cfg, data_section)
    except Diverged as err:
        raise TrialDiverged(str(err)) from None


def run_trial(trial, study: Study, search, scorer: RealismScorer, out: Path, dims: list[Dimension], single: bool,
              progress: bool = False):
    """Train, generate and score class by class; returns the objective (or (objective, F1))."""
    import optuna

    params = {d.name: d.suggest(trial) for d in dims}
    folder = out / TRIALS_DIR / str(trial.number)
    s = _trial_settings(study, search, params, folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_trial_study(s, folder / TRIAL_STUDY)
    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
    rows, t0 = [], time.perf_counter()
    for step, label in enumerate(scorer.images.test):
        cfg = copy.deepcopy(s.lora)  # each class its own LoRA and image folders (a folder's fingerprint covers its inputs)
        cfg.classes, cfg.output = [label], str(folder / label / "lora")
        _train(cfg, s.data)
        gs = copy.deepcopy(s)
        gs.generate.classes, gs.generate.lora, gs.generate.output = [label], cfg.output, str(folder / label / "images")
        _generate(gs, progress=progress)
        rows.append(scorer.score(label, _synthetic_images(s, folder / label / "images", label)))
        write_json_atomic(folder / TRIAL_SCORES, {"trial": trial.number, "fold": search.fold, "params": params, "classes": rows})
        running = sum(r["objective"] for r in rows) / len(rows)
        log.info("trial %d: %s  KID %.4g (ref %.4g)  C2ST %.2f  objective %.4f  (running %.4f)", trial.number, label,
                 rows[-1]["kid"], rows[-1]["kid_ref"], rows[-1]["c2st_accuracy"], rows[-1]["objective"], running)
        if single:
            trial.report(running, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"running objective {running:.4f} after {label}")
    value = sum(r["objective"] for r in rows) / len(rows)
    trial.set_user_attr("kid", {r["class"]: r["kid"] for r in rows})
    trial.set_user_attr("c2st", {r["class"]: r["c2st_accuracy"] for r in rows})
    f1 = None if single else downstream_f1(s, search, folder, progress)
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
    return value if single else (value, f1)


def downstream_f1(s: Study, search, folder: Path, progress: bool = False) -> float:
    """The second objective: CV macro F1 of the mix `search.f1_mix` over the folds `search.f1_folds`.

    Each of those folds gets its own LoRAs (trained on its training images) and synthetic images,
    and the classifier is cross-validated on those folds only (a split file of just them, in
    OUT/trials/<n>/f1/), exactly as the whole study would do with these parameters.
    """
    from classify.cv import run_cv
    from classify.mixes import parse_mixes
    from prompts.dataset import read_dataset
    from prompts.splits import Fold, read_split, write_split

    sub = folder / "f1"
    (mix,) = parse_mixes([search.f1_mix])
    if not mix.uses_synthetic:
        raise UserError(f"search.f1_mix {search.f1_mix}: the mix uses no synthetic images; use real+P, synthetic or balance")
    split = read_split(s.data.split, read_dataset(s.data.data, skip_bad_images=s.data.skip_bad_images, reading=from_section(s.data)))
    chosen = [split.select(k)[0] for k in dict.fromkeys(search.f1_folds)]
    sub_split = dataclasses.replace(split, folds=[Fold(i, f.repeat, f.fold, f.train, f.test) for i, f in enumerate(chosen)])
    write_split(sub / "split.json", sub_split)
    f = copy.deepcopy(s)
    f.data.split = str(sub / "split.json")
    f.lora.output, f.lora.fold = str(sub / "lora"), "all"
    _train(f.lora, f.data)
    g = f.generate
    g.lora, g.output, g.fold, g.count = f.lora.output, str(sub / "images"), "all", None
    g.fraction, g.balance = [mix.percent / 100 if mix.kind == "plus" else 1.0], mix.kind == "balance"
    write_trial_study(f, sub / TRIAL_STUDY)
    _generate(f, progress=progress)
    f.classify.output, f.classify.synthetic, f.classify.mixes = str(sub / "cv"), g.output, [search.f1_mix]
    summary = run_cv(f.data, f.classify, progress=progress)
    rows = [r for rows in summary["tables"].values() for r in rows if r["mix"] == mix.name]
    return float(rows[0]["metrics"]["f1"]["mean"])


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- the search loop

def _check_output(out: Path, study: Study, search, url: str) -> None:
    """OUT is ours: not in the data folder; OUT/search.json names this storage and study (written once)."""
    from prompts.guard import check_output_dir

    check_output_dir(out, data=study.data.data, flag="--output")
    ident = {"storage": url, "study_name": search.study_name}
    marker = out / "search.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old != ident:
            raise UserError(f"--output {out} holds the search {old} (see {marker}); choose another --output, "
                            "or the same --storage and --study-name to continue it")


def _write_marker(out: Path, search, url: str) -> None:
    """OUT/search.json, once the storage opened: nothing is written before every check passed."""
    marker = out / "search.json"
    if not marker.is_file():
        write_json_atomic(marker, {"storage": url, "study_name": search.study_name})


def _check_inputs(study: Study, search, dims: list[Dimension], out: Path) -> None:
    """The trainer's and the classifier's checks on the first trial's settings, before anything is written."""
    from classify.model import check_backbone, normalize_weights
    from lora.train import plan

    first = {d.name: d.choices[0] if d.choices else (int(d.low) if d.integer else d.low) for d in dims}
    s = _trial_settings(study, search, first, out / TRIALS_DIR / "check")
    plan(s.lora, s.data)
    check_backbone(study.classify.backbone)
    normalize_weights(study.classify.weights)


def _create_study(url: str, search, single: bool):
    import warnings

    import optuna

    storage = open_storage(url)
    seed = (search.seed * 1_000_003 + os.getpid()) % 2**32  # several processes must not draw the same startup trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar and multivariate
        # constant_liar: RUNNING trials of other processes count as bad, so processes do not crowd one spot
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=single,
                                             n_startup_trials=max(2, min(10, search.trials // 3)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials, n_warmup_steps=0)
              if single and search.pruner == "median" else optuna.pruners.NopPruner())
    directions = ["minimize"] if single else ["minimize", "maximize"]
    study = optuna.create_study(storage=storage, study_name=search.study_name, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    if len(study.directions) != len(directions):
        raise UserError(f"study {search.study_name} in {url} has {len(study.directions)} objective(s), this search "
                        f"{len(directions)} (objective {search.objective}); choose another --study-name")
    return study


def run_search(study_or_path, search=None, *, model: str | None = None, weights: str | None = None,
               progress: bool = True) -> dict:
    """Run trials until `search.trials` are COMPLETE in the storage (with any other processes); write the outputs.

    study_or_path: a `Study` (flags applied) or a study-file path; search: its `search`
    section (default: the study's). model / weights: files that stand for the study's
    `lora.model: tiny` / `classify.weights: calibrated` (the workflow passes the ones it built;
    without them `tiny` is written to OUT/models/tiny-sd). The best study keeps the names.
    Returns {"complete", "pruned", "failed", "best", "outputs"}.
    """
    study = study_or_path if isinstance(study_or_path, Study) else load_study(study_or_path)
    search = search or study.search
    return _search(study, search, model, weights, progress)


def _stand_ins(study: Study, out: Path, model: str | None, weights: str | None) -> Study:
    """The study the trials run: `tiny` and `calibrated` replaced by the given files (tiny: OUT/models/tiny-sd)."""
    work = copy.deepcopy(study)
    for section in (work.lora, work.generate):
        if section.model == "tiny":
            section.model = model or str(out / TINY_MODEL_DIR)
    if work.classify.weights == "calibrated" and weights:
        work.classify.weights = weights
    return work


def _search(study: Study, search, model: str | None, weights: str | None, progress: bool) -> dict:
    import optuna
    from optuna.trial import TrialState

    if not search.output:
        raise UserError("--output is missing: give the search folder (search.output)")
    if not study.data.data:
        raise UserError("--data is missing: give the data folder (data.data)")
    if not study.lora.model:
        raise UserError("--model is missing: give the base model (lora.model)")
    if study.lora.per == "all":
        raise UserError("lora.per all: the search trains and scores one class at a time; use per class or cell_line_class")
    dims = search_space(search)
    if not dims:
        raise UserError("the search space is empty: give at least one of search." + ", search.".join(SPACE_KEYS))
    out = Path(search.output)
    url = storage_url(search, out)
    images = fold_images(study.data, search.fold)
    user_study, study = study, _stand_ins(study, out, model, weights)
    if study.lora.model == str(out / TINY_MODEL_DIR):  # written into OUT once OUT is known to be ours
        _check_output(out, study, search, url)
        from diffusion.tiny import write_tiny_model

        write_tiny_model(out / TINY_MODEL_DIR)  # kept when there (every worker makes the same, atomically)
    _check_inputs(study, search, dims, out)
    _check_output(out, study, search, url)
    single = search.objective == "realism"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = _create_study(url, search, single)
    _write_marker(out, search, url)
    scorer = RealismScorer(study.classify, images, out / "feature_cache")
    host, pid = socket.gethostname(), os.getpid()
    diverged = 0
    while True:
        fail_stale_trials(ostudy, out)
        states = [t.state for t in ostudy.get_trials(deepcopy=False)]
        done, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        if done >= search.trials:
            break
        if done + running >= search.trials:
            time.sleep(POLL_SECONDS)  # the other processes' trials may complete the N, or fail
            continue
        trial = ostudy.ask()
        for k, v in (("host", host), ("pid", pid), ("pid_start", _process_start(pid)), ("heartbeat", time.time())):
            trial.set_user_attr(k, v)
        if _surplus(ostudy, trial.number, search.trials):  # another process asked at the same moment
            trial.set_user_attr("note", "surplus: N trials were already complete or running when it started; not run")
            ostudy.tell(trial, state=TrialState.FAIL)
            continue
        log.info("trial %d started (%d of %d complete, %d running elsewhere)", trial.number, done, search.trials, running)
        try:
            with _Heartbeat(trial):
                value = run_trial(trial, study, search, scorer, out, dims, single, progress)
        except optuna.TrialPruned as err:
            ostudy.tell(trial, state=TrialState.PRUNED)
            shutil.rmtree(out / TRIALS_DIR / str(trial.number), ignore_errors=True)  # ours: pruned trials keep no files
            log.info("trial %d pruned (%s)", trial.number, err)
            continue
        except TrialDiverged as err:  # the trial's parameters are at fault, not the input: the search goes on
            trial.set_user_attr("note", str(err))
            ostudy.tell(trial, state=TrialState.FAIL)
            shutil.rmtree(out / TRIALS_DIR / str(trial.number), ignore_errors=True)
            log.warning("trial %d failed: %s", trial.number, err)
            diverged += 1
            if diverged >= DIVERGED_IN_A_ROW:
                raise UserError(f"{diverged} trials in a row diverged (the last: {err}); narrow the search's learning-rate "
                                "ranges (search.unet_lr, search.text_encoder_lr) and run again: the search resumes") from None
            continue
        except BaseException:
            ostudy.tell(trial, state=TrialState.FAIL)
            shutil.rmtree(out / TRIALS_DIR / str(trial.number), ignore_errors=True)
            raise
        ostudy.tell(trial, value)
        diverged = 0
        log.info("trial %d complete: %s", trial.number, value)
    from .search_report import write_outputs

    outputs = write_outputs(ostudy, user_study, search, out, images, scorer.kid_ref)
    trials = ostudy.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = outputs.get("best_params")
    log.info("%d complete, %d pruned, %d failed trial(s); best parameters %s; wrote %s", count[TrialState.COMPLETE],
             count[TrialState.PRUNED], count[TrialState.FAIL], best, ", ".join(str(p) for p in outputs["files"]))
    return {"complete": count[TrialState.COMPLETE], "pruned": count[TrialState.PRUNED], "failed": count[TrialState.FAIL],
            "best": best, "outputs": [str(p) for p in outputs["files"]]}


def _surplus(ostudy, number: int, n: int) -> bool:
    """Whether N trials numbered before `number` are already COMPLETE or RUNNING (so this one would exceed N)."""
    from optuna.trial import TrialState

    busy = (TrialState.COMPLETE, TrialState.RUNNING)
    return sum(t.number < number and t.state in busy for t in ostudy.get_trials(deepcopy=False)) >= n


def workflow_search_dir(study: Study, out: Path | None = None) -> Path:
    """The workflow's search folder: search.output when given (relative to the study file), else OUT/search."""
    if study.search.output:
        return Path(study.search.output).resolve()
    return Path(out or study.study.output).resolve() / "search"


__all__ = ["run_search", "search_space", "parse_dimension", "class_objective", "fold_images", "fail_stale_trials",
           "best_study", "write_trial_study", "Dimension"]
