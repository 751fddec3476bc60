"""The one cross-validation protocol (`analysis.crossval`) and the core it stands on: `make_split`, the mix grammar.

The protocol is driven here by a task of our own, small enough to check by hand: points on a line, two classes,
a nearest-centroid classifier in numpy. Its numbers are recomputed directly and compared with what the
protocol summarised. The two real tasks (`classify cv`, `segment cv`) are run through their commands to show
that a changed reading rule (`data.normalize`) is never answered with stale results.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import crossval, stats
from prompts import fingerprint
from prompts.dataset import Dataset, Record, pairs_dataset
from prompts.errors import UserError
from prompts.layout import FINGERPRINT_FILE, RESULTS_JSON, RUNS_DIR, SPLIT_FILE
from prompts.mixes import CLASSIFICATION, PHENOTYPING, SEGMENTATION, mixes_error, parse_mixes
from prompts.normalize import DEFAULT
from prompts.splits import check_fold_not_empty, make_split

# unit tier by default (tests/conftest.py); its slowest test is on END_TO_END_TESTS there


# ---------------------------------------------------------------- a task of our own: points, nearest centroid


@dataclass(frozen=True)
class Point:
    name: str
    label: str
    x: float
    source: str = "real"

    @property
    def key(self) -> str:
        return f"{self.name}={self.x!r}"


def points() -> list[Point]:
    """12 real points: class a around 0, class b around 1, with noise that makes some folds err."""
    rng = np.random.default_rng(0)
    return [Point(f"p{i:02d}", "ab"[i % 2], float(i % 2 + rng.normal(0, 0.45))) for i in range(12)]


def synthetic_points(tree: str) -> list[Point]:
    """A synthetic tree: tight clusters near each class's centre."""
    return [Point(f"{tree}/s{i}", "ab"[i % 2], float(i % 2) + 0.05 * (i // 2), "synthetic") for i in range(8)]


def accuracy(train: list[Point], test: list[Point]) -> float:
    """Nearest class centroid on x: the fraction of test points given their own class."""
    centres = {c: np.mean([p.x for p in train if p.label == c]) for c in sorted({p.label for p in train})}
    right = [min(centres, key=lambda c: abs(p.x - centres[c])) == p.label for p in test]
    return float(np.mean(right))


@dataclass
class Data:
    data: str
    split: str | None = None
    normalize: str = "percentile"  # the reading rule's keys of the data section (`prompts.normalize.from_section`)
    percentiles: tuple = (1.0, 99.8)
    channels: tuple = ()
    z: str = "max"
    t: int = 0


@dataclass
class Section:
    output: str
    folds: int = 3
    repeats: int = 1
    group_by: str | None = None
    seed: int = 0
    mixes: tuple = ("real", "real+50", "synthetic")
    overwrite: bool = False
    delta: float = 0.02


class CentroidTask(crossval.Task):
    command, section_name, run_name, noun, generator = "points cv", "points", "points CV run", "points", "make_points"
    output_names = (RESULTS_JSON, SPLIT_FILE, RUNS_DIR)
    metrics, primary, vocabulary = ("accuracy", "error"), "accuracy", SEGMENTATION
    vs_real_fields = ("diff_mean", "diff_std", "t", "p", "ci", "j", "diffs")

    def __init__(self, data, section, leak: bool = False):
        super().__init__(data, section, progress=False)
        self.points = {p.name: p for p in points()}
        self.leak, self.trained = leak, 0

    def read_items(self) -> Dataset:
        return Dataset(Path(self.data.data), [Record(p.name, p.label) for p in self.points.values()], "points")

    def read_synthetic(self, mixes):
        if not any(m.uses_synthetic for m in mixes):
            return None
        return SimpleNamespace(names=["s1"], root=Path(self.data.data) / "SYN", per_fold={})

    def fold_items(self, fold):
        return [self.points[p] for p in fold.train], [self.points[p] for p in fold.test]

    def tree_items(self, fold, name):
        items = synthetic_points(name)
        if self.leak:  # a copy of the fold's first test point
            test = self.points[fold.test[0]]
            items.append(Point(test.name, test.label, test.x, "synthetic"))
        return crossval.FoldTree(items, False, Path(name))

    def training_set(self, mix, real, synthetic, rng):
        if mix.kind == "real":
            return list(real), 0
        want = len(real) if mix.kind == "synthetic" else round(len(real) * mix.percent / 100)
        got = [synthetic[i] for i in sorted(rng.permutation(len(synthetic))[:want])]
        return ([] if mix.kind == "synthetic" else list(real)) + got, want - len(got)

    def check_no_leak(self, job):
        test = {p.key for p in job.test}
        for p in job.train:
            if p.source == "synthetic" and p.key in test:
                raise UserError(f"synthetic point {p.name} is a test point of {job.fold.name}")

    def fingerprint_parts(self, inputs, jobs):
        return {"data": sorted(p.key for p in self.points.values()), "split": [list(f.test) for f in inputs.split.folds]}

    def job_fingerprint(self, job):
        return fingerprint.digest({"mix": job.mix.kind, "train": [p.key for p in job.train], "test": [p.key for p in job.test]})

    def train_and_score(self, job):
        self.trained += 1
        acc = accuracy(job.train, job.test)
        return {"fold": job.fold.index, "repeat": job.fold.repeat, "mix": job.mix.name, "tree": job.tree, "leaky": job.leaky,
                "fingerprint": job.fingerprint, "metrics": {"accuracy": acc, "error": 1 - acc}, "n_train": len(job.train),
                "synthetic_fraction": sum(p.source == "synthetic" for p in job.train) / len(job.train),
                "shortfall": job.shortfall}

    def results(self, inputs, common, tables, runs):
        crossval.holm_verdicts(tables, self.primary, common["n_train_mean"], common["n_test_mean"], common["n_splits"],
                               self.section.delta, baseline=self.baseline, lower_is_better=self.primary in self.lower_is_better)
        return {"version": 1, **common, "tables": tables, "runs": runs}


def centroid_task(tmp_path: Path, normalize: str = "percentile", **settings) -> CentroidTask:
    (tmp_path / "data").mkdir(exist_ok=True)
    leak = settings.pop("leak", False)
    return CentroidTask(Data(str(tmp_path / "data"), normalize=normalize), Section(str(tmp_path / "out"), **settings), leak=leak)


def test_the_protocol_runs_a_task_and_summarises_exactly_what_it_computed(tmp_path):
    task = centroid_task(tmp_path)
    res = crossval.run(task)
    out = tmp_path / "out"
    split = json.loads((out / SPLIT_FILE).read_text())
    assert task.trained == 3 * 3 and res["timing"]["runs_trained"] == 9 and res["timing"]["runs_reused"] == 0
    assert set(fingerprint.claimed(out)) >= {RESULTS_JSON, SPLIT_FILE, RUNS_DIR, FINGERPRINT_FILE}
    pts = {p.name: p for p in points()}
    real = [accuracy([pts[n] for n in f["train"]], [pts[n] for n in f["test"]]) for f in split["folds"]]
    rows = {r["mix"]: r for r in res["tables"]["s1"]}
    assert rows["real"]["metrics"]["accuracy"]["folds"] == real
    assert rows["real"]["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(real))
    assert rows["real"]["metrics"]["accuracy"]["std"] == pytest.approx(np.std(real, ddof=1))
    for mix in ("real+50", "synthetic"):
        runs = [json.loads((out / RUNS_DIR / "s1" / mix / f"fold_{k}.json").read_text()) for k in range(3)]
        diffs = [r["metrics"]["accuracy"] - a for r, a in zip(runs, real)]
        vs = rows[mix]["vs_real"]["accuracy"]
        assert vs["diffs"] == pytest.approx(diffs) and vs["diff_mean"] == pytest.approx(np.mean(diffs)) and vs["j"] == 3
        n_train, n_test = 8.0, 4.0  # 12 points in 3 folds
        assert vs["ci"] == pytest.approx(list(stats.corrected_interval(np.mean(diffs), np.std(diffs, ddof=1), 3, n_train, n_test, 0.95)))
        assert rows[mix]["verdict"]["word"] in ("helps", "hurts", "equivalent", "inconclusive") and "p_holm" in vs
    assert rows["synthetic"]["synthetic_fraction"] == 1.0 and rows["real+50"]["synthetic_fraction"] == pytest.approx(4 / 12)
    assert rows["real+50"]["shortfall"] == 0 and rows["real"]["leaky_folds"] == []


def test_a_rerun_reuses_every_saved_result_and_a_new_reading_rule_reuses_none(tmp_path):
    first = crossval.run(centroid_task(tmp_path))
    again = centroid_task(tmp_path)
    res = crossval.run(again)
    assert again.trained == 0 and res["timing"]["runs_reused"] == 9 and res["tables"] == first["tables"]
    with pytest.raises(UserError, match=r"made from other inputs \(reading changed since\); pass --overwrite \(points.overwrite"):
        crossval.run(centroid_task(tmp_path, normalize="none"))
    task = centroid_task(tmp_path, normalize="none", overwrite=True)
    res = crossval.run(task)
    assert res["reading"]["normalize"] == "none"  # the results record names the rule (reports state it)
    assert task.trained == 9 and res["timing"]["runs_reused"] == 0  # the task's own fingerprints ignore the rule


def test_a_leak_and_a_foreign_results_file_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="is a test point of fold_0"):
        crossval.run(centroid_task(tmp_path, leak=True))
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RESULTS_JSON).write_text("{}")
    with pytest.raises(UserError, match=f"already holds {RESULTS_JSON} but no {FINGERPRINT_FILE} of a points CV run"):
        crossval.run(centroid_task(tmp_path))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RESULTS_JSON]


def test_mixes_a_task_cannot_build_are_refused_with_its_vocabulary(tmp_path):
    with pytest.raises(UserError, match=r"--mixes balance: unknown mix; use real, real\+P \(e.g. real\+50\) or synthetic"):
        crossval.run(centroid_task(tmp_path, mixes=("real", "balance")))
    with pytest.raises(UserError, match="mixes synthetic need synthetic points: pass --synthetic DIR"):
        task = centroid_task(tmp_path, mixes=("real", "synthetic"))
        task.read_synthetic = lambda mixes: None
        crossval.run(task)


# ---------------------------------------------------------------- what a task may choose: lower is better, a baseline, arms


class ErrorTask(CentroidTask):
    """The same task, its verdicts about the error (lower is better) instead of the accuracy."""

    primary, lower_is_better = "error", frozenset({"error"})


def test_a_lower_is_better_primary_gives_the_verdicts_of_its_complement(tmp_path):
    """error = 1 - accuracy: judged as lower-is-better, every verdict and Holm p equals the accuracy's; the
    recorded differences stay mix - real (the error's are the accuracy's negated)."""
    (tmp_path / "a").mkdir()
    by_accuracy = crossval.run(centroid_task(tmp_path / "a"))
    (tmp_path / "e" / "data").mkdir(parents=True)
    by_error = crossval.run(ErrorTask(Data(str(tmp_path / "e" / "data")), Section(str(tmp_path / "e" / "out"))))
    for acc, err in zip(by_accuracy["tables"]["s1"], by_error["tables"]["s1"]):
        if acc["mix"] == "real":
            continue
        assert err["verdict"]["word"] == acc["verdict"]["word"]
        assert err["verdict"]["p_holm"] == pytest.approx(acc["verdict"]["p_holm"])
        assert err["vs_real"]["error"]["diffs"] == pytest.approx([-d for d in acc["vs_real"]["accuracy"]["diffs"]])
    assert crossval.improvements(err, acc, "error", lower_is_better=True) == pytest.approx(
        [-d for d in crossval.paired_diffs(err, acc, "error")])


def median_accuracy(train: list[Point], test: list[Point]) -> float:
    """Nearest class median on x."""
    centres = {c: np.median([p.x for p in train if p.label == c]) for c in sorted({p.label for p in train})}
    return float(np.mean([min(centres, key=lambda c: abs(p.x - centres[c])) == p.label for p in test]))


class TwoArmTask(CentroidTask):
    """Two classifiers side by side (mean and median centroids), compared with `noaug` (here: the real points
    again), not with `real`."""

    arms, baseline, vocabulary = ("mean", "median"), "noaug", CLASSIFICATION

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[tuple, list[str]] = {}

    def training_set(self, mix, real, synthetic, rng):
        return (list(real), 0) if mix.kind == "noaug" else super().training_set(mix, real, synthetic, rng)

    def train_and_score(self, job):
        res = super().train_and_score(job)
        self.seen[(job.arm, job.fold.index, job.mix.name)] = [p.name for p in job.train]
        if job.arm == "median":
            acc = median_accuracy(job.train, job.test)
            res["metrics"] = {"accuracy": acc, "error": 1 - acc}
        return {**res, "arm": job.arm}


def test_arms_train_on_the_same_sets_and_are_each_compared_with_their_own_baseline(tmp_path):
    (tmp_path / "data").mkdir()
    section = Section(str(tmp_path / "out"), mixes=("real", "noaug", "real+50"))
    task = TwoArmTask(Data(str(tmp_path / "data")), section)
    res = crossval.run(task)
    out = tmp_path / "out"
    assert task.trained == 2 * 3 * 3 and sorted(res["tables"]) == ["mean/s1", "median/s1"]
    for k in range(3):
        for mix in ("real", "noaug", "real+50"):
            assert task.seen[("mean", k, mix)] == task.seen[("median", k, mix)]
            assert (out / RUNS_DIR / "median" / ("s1" if mix == "real+50" else "real") / mix / f"fold_{k}.json").is_file()
    means = {}
    for arm in task.arms:
        rows = {r["mix"]: r for r in res["tables"][f"{arm}/s1"]}
        assert all(r["arm"] == arm for r in rows.values()) and rows["noaug"]["vs_real"] == {}
        base = rows["noaug"]["metrics"]["accuracy"]["folds"]
        mine = rows["real+50"]["metrics"]["accuracy"]["folds"]
        assert rows["real+50"]["vs_real"]["accuracy"]["diffs"] == pytest.approx([m - b for m, b in zip(mine, base)])
        assert rows["real"]["vs_real"]["accuracy"]["diffs"] == [0.0, 0.0, 0.0]  # noaug is real here
        assert "verdict" in rows["real"] and "verdict" in rows["real+50"] and "verdict" not in rows["noaug"]
        means[arm] = rows["real"]["metrics"]["accuracy"]["mean"]
    assert means["mean"] != means["median"]  # the arms really are two classifiers
    again = TwoArmTask(Data(str(tmp_path / "data")), section)
    assert crossval.run(again)["tables"] == res["tables"] and again.trained == 0


# ---------------------------------------------------------------- one make_split for images and pairs


def images_dataset(per_class: dict[str, int], groups: int | None = None) -> Dataset:
    records = [Record(f"{c}/{i}.png", c, group=f"g{i % groups}" if groups else None)
               for c, n in per_class.items() for i in range(n)]
    return Dataset(Path("/data"), records, "folders")


def pairs(per_class: dict[str | None, int]) -> Dataset:
    found = [SimpleNamespace(name=f"images/{c}_{i}.png", label=c) for c, n in per_class.items() for i in range(n)]
    return pairs_dataset("/pairs", found)


@pytest.mark.parametrize("dataset, noun", [(images_dataset({"a": 6, "b": 2}), "image(s)"),
                                           (pairs({"A549": 6, "HUVEC": 2}), "image-mask pair(s)")])
def test_make_split_names_the_smallest_class_for_images_and_pairs(dataset, noun):
    with pytest.raises(UserError) as err:
        make_split(dataset, 3, 1, None, 0)
    assert f"has 2 {noun} in {dataset.root}, fewer than --folds 3" in str(err.value), err.value
    assert str(err.value).startswith(("class 'b'", "class 'HUVEC'")), err.value


@pytest.mark.parametrize("dataset", [images_dataset({"a": 6, "b": 6}, groups=2), pairs({"A549": 6, "HUVEC": 6})])
def test_make_split_refuses_folds_that_groups_cannot_fill_for_images_and_pairs(dataset):
    """Pairs group by their class (`group`): two cell lines cannot fill three folds, images in two groups neither."""
    with pytest.raises(UserError, match="only 2 group"):
        make_split(dataset, 3, 1, "group", 0)


@pytest.mark.parametrize("dataset", [images_dataset({"a": 6, "b": 4}), pairs({None: 7})])
def test_make_split_tests_every_item_once_per_repeat_for_images_and_pairs(dataset):
    split = make_split(dataset, 2, 2, None, 5)
    assert len(split.folds) == 4 and split == make_split(dataset, 2, 2, None, 5)
    for rep in (0, 1):
        tested = [p for f in split.folds if f.repeat == rep for p in f.test]
        assert sorted(tested) == sorted(r.path for r in dataset.records)
    assert all(f.test for f in split.folds)


def test_an_empty_test_fold_is_refused_naming_it():
    check_fold_not_empty([3], 1, 0)
    with pytest.raises(UserError, match="fold 1 of repeat 0 is empty; use fewer --folds or another --group-by"):
        check_fold_not_empty([], 1, 0)


# ---------------------------------------------------------------- one mix grammar, a vocabulary per task


def test_each_task_parses_its_own_vocabulary_with_one_grammar():
    from segment.mixes import parse_mixes as segment_mixes

    assert [m.kind for m in parse_mixes("real,real+25%,balance,oversample,classweight,noaug", CLASSIFICATION)] == \
        ["real", "plus", "balance", "oversample", "classweight", "noaug"]
    assert [m.name for m in segment_mixes(["real", "real+50", "synthetic"])] == ["real", "real+50", "synthetic"]
    for bad in ("balance", "noaug", "oversample"):
        with pytest.raises(UserError, match=rf"--mixes {bad}: unknown mix; use real, real\+P \(e.g. real\+50\) or synthetic"):
            segment_mixes(["real", bad])
    assert mixes_error("segment", ["real", "balance"], SEGMENTATION) == \
        "segment.mixes: balance: unknown mix; use real, real+P (e.g. real+50) or synthetic"
    assert mixes_error("classify", ["real", "balance"], CLASSIFICATION) is None
    regimes = parse_mixes("zero-shot,retrained-k1,retrained-k05,co-only", PHENOTYPING)
    assert [(m.name, m.kind, m.k, m.uses_synthetic) for m in regimes] == [
        ("zero-shot", "zero-shot", 0, False), ("retrained-k1", "retrained", 1, False), ("retrained-k5", "retrained", 5, False),
        ("co-only", "co-only", 0, False)]
    assert [(m.name, m.kind, m.k, m.uses_synthetic) for m in parse_mixes("zero-shot+25,retrained-k1+50", PHENOTYPING)] == [
        ("zero-shot+25", "regime+P", 0, True), ("retrained-k1+50", "regime+P", 1, True)]
    with pytest.raises(UserError, match=r"--mixes real: unknown mix; use zero-shot, retrained-k<k> \(e.g. retrained-k2\), co-only, "
                                        r"<zero-shot or retrained-k<k>>\+P \(e.g. retrained-k1\+50\)"):
        parse_mixes("zero-shot,real", PHENOTYPING)
    with pytest.raises(UserError, match="k must be at least 1"):
        parse_mixes("retrained-k0", PHENOTYPING)


def test_prompts_check_refuses_a_segmentation_mix_the_task_cannot_build(tmp_path):
    from prompts.blobs import make_blob_pairs
    from prompts.check import check_file

    make_blob_pairs(tmp_path / "data", n=3, size=32, seed=1)
    study = tmp_path / "study.yaml"
    study.write_text("study: {output: out, task: segmentation}\ndata: {data: data}\ncontrolnet: {model: tiny}\n"
                     "segment: {folds: 3, mixes: [real, balance]}\n")
    assert check_file(study) == [f"{study}: segment.mixes: balance: unknown mix; use real, real+P (e.g. real+50) or synthetic"]


# ---------------------------------------------------------------- the reading rule invalidates reuse, every task


def _refused(main, argv) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    return str(err.value)


def _segment_cv(tmp_path: Path):
    """(main, argv, section, runs per run) of `segment cv` on 4 blob pairs, 2 folds, one mix."""
    from prompts.blobs import make_blob_pairs
    from segment.__main__ import main

    data = make_blob_pairs(tmp_path / "data", n=4, size=64, seed=0)
    return main, ["cv", "--no-progress", "--data", str(data), "--output", str(tmp_path / "out"), "--mixes", "real", "--folds",
                  "2", "--weights", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2", "--overlays", "0"], "segment", 2


def _sixteen_bit_classes(root: Path) -> Path:
    """2 classes x 4 grayscale 16-bit PNGs: the rule changes their pixels (8-bit data would be read as is)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for c, level in (("dim", 300), ("bright", 3000)):
        (root / c).mkdir(parents=True)
        for i in range(4):
            a = (rng.gamma(2.0, level, (32, 32)) + 100 * i).clip(0, 65535).astype(np.uint16)
            Image.fromarray(a).save(root / c / f"{c}{i}.png")
    return root


def _classify_cv(tmp_path: Path):
    """(main, argv, section, runs per run) of `classify cv` on 2 classes of 16-bit images (the rule changes their pixels)."""
    from classify.__main__ import main

    data = _sixteen_bit_classes(tmp_path / "data")
    return main, ["cv", "--no-progress", "--data", str(data), "--output", str(tmp_path / "out"), "--mixes", "real", "--folds", "2",
                  "--backbone", "EfficientNetB0", "--weights", "none", "--image-size", "32", "--epochs", "1",
                  "--cache-dir", str(tmp_path / "cache")], "classify", 2


def _phenotype_cv(tmp_path: Path):
    """(main, argv, section, runs per run) of `phenotype cv` (reference classifier, 2 regimes) on drawn co-cultures."""
    from phenotype.__main__ import main
    from phenotype.scenes import synthetic_cell, write_study_data

    rng = np.random.default_rng(0)
    pools = {"small": [synthetic_cell(4, 220, "small", rng) for _ in range(8)],
             "large": [synthetic_cell(8, 90, "large", rng) for _ in range(8)]}
    data = tmp_path / "data"
    write_study_data(data, pools, mono_images=1, co_images=4, cells_per_image=5, size=(80, 80), background=30, seed=1)
    return main, ["cv", "--no-progress", "--data", str(data), "--output", str(tmp_path / "out"), "--models", "reference",
                  "--regimes", "zero-shot", "co-only", "--folds", "2", "--trees", "5", "--crop-size", "24"], "phenotype", 4


# every cross-validation command on the protocol: a new task registers here, it does not copy the test
CV_COMMANDS = {"classification": (_classify_cv, True), "segmentation": (_segment_cv, True), "phenotyping": (_phenotype_cv, False)}


@pytest.mark.parametrize("task", sorted(CV_COMMANDS))
def test_cv_with_another_normalize_into_the_same_output_is_refused_or_recomputed(task, tmp_path, capsys):
    make, needs_keras = CV_COMMANDS[task]
    if needs_keras:
        pytest.importorskip("keras")
    main, argv, section, n_runs = make(tmp_path)
    assert main([*argv, "--normalize", "percentile"]) == 0
    capsys.readouterr()
    _refused(main, [*argv, "--normalize", "none"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reading changed since" in err and f"{section}.overwrite" in err, err
    assert main([*argv, "--normalize", "none", "--overwrite"]) == 0
    res = json.loads((tmp_path / "out" / RESULTS_JSON).read_text())
    assert res["timing"]["runs_trained"] == n_runs and res["timing"]["runs_reused"] == 0


# ---------------------------------------------------------------- classification's record: the protocol computes what it did


ROW_KEYS = ["mix", "tree", "uses_synthetic", "folds", "metrics", "vs_real", "synthetic_fraction", "confusion", "per_class",
            "leaky_folds", "shortfall", "verdict", "flags"]  # results.json's row contract, in its order
TOP_KEYS = ["version", "data", "split", "group_by", "synthetic", "synthetic_per_fold", "classes", "class_counts", "n_folds",
            "n_splits", "repeats", "n_train_mean", "n_test_mean", "reading", "wilcoxon_min_p", "settings", "tables", "runs", "flags"]


def test_classify_results_record_is_the_direct_computation_over_its_runs():
    """`classify.cv.summarize` (now the protocol with the classification task) against numbers computed here by hand
    from the same runs: every mean, spread, paired difference, corrected test, confusion and per-class score, and the
    record's key order (results.json is compared byte for byte across versions)."""
    from classify.cv import summarize
    from classify.synthetic import SyntheticSet
    from prompts.schema.classify import ClassifySection

    classes = ["a", "b", "c"]
    dataset = Dataset(Path("/data"), [Record(f"{c}/{i}.png", c) for c in classes for i in range(6)], "folders")
    split = make_split(dataset, 3, 2, None, 0)
    mixes = parse_mixes("real,real+50,balance,oversample")
    syn = SyntheticSet(Path("/syn"), shared={"w1.0": None})
    rng = np.random.default_rng(7)
    runs = []
    for mix in mixes:
        for fold in split.folds:
            y_true = rng.integers(0, 3, len(fold.test))
            y_pred = np.where(rng.random(len(fold.test)) < 0.6, y_true, rng.integers(0, 3, len(fold.test)))
            runs.append({"fold": fold.index, "repeat": fold.repeat, "mix": mix.name, "tree": "w1.0" if mix.uses_synthetic else "real",
                         "leaky": fold.index == 1 and mix.uses_synthetic, "metrics": stats.fold_metrics(y_true, y_pred, classes),
                         "n_train": len(fold.train), "n_test": len(fold.test), "synthetic_fraction": 0.25 if mix.uses_synthetic else 0.0,
                         "shortfall": {"c": 1} if mix.name == "balance" else {}, "counts": {}, "probs": [[1.0]], "y_true": [0]})
    res = summarize(runs, dataset, split, mixes, syn, ClassifySection(), DEFAULT)
    assert list(res) == TOP_KEYS and res["classes"] == classes and res["n_folds"] == 6
    n_train, n_test = 12.0, 6.0
    assert res["n_train_mean"] == n_train and res["n_test_mean"] == n_test
    assert res["runs"] == [{k: v for k, v in r.items() if k not in ("probs", "y_true")} for r in runs]
    by = {(r["mix"], r["fold"]): r for r in runs}
    for row in res["tables"]["w1.0"]:
        assert list(row) == ROW_KEYS
        mine = [by[(row["mix"], k)] for k in range(6)]
        for m in stats.METRICS:
            values = [r["metrics"][m] for r in mine]
            assert row["metrics"][m] == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values, ddof=1)),
                                         "folds": values}
            if row["mix"] == "real":
                assert row["vs_real"] == {}
                continue
            diffs = np.array(values) - [by[("real", k)]["metrics"][m] for k in range(6)]
            t, p = stats.corrected_ttest(diffs, n_train, n_test)
            assert row["vs_real"][m] == {"diff_mean": pytest.approx(diffs.mean()), "diff_std": pytest.approx(diffs.std(ddof=1)),
                                         "t": pytest.approx(t), "p": pytest.approx(p),
                                         "min_significant_diff": pytest.approx(stats.critical_difference(diffs.std(ddof=1), 6, n_train, n_test))}
        assert row["confusion"] == np.sum([r["metrics"]["confusion"] for r in mine], axis=0).tolist()
        for c in classes:
            f1 = [r["metrics"]["per_class"][c]["f1"] for r in mine]
            assert row["per_class"][c]["f1"] == pytest.approx(np.mean([v for v in f1 if v is not None]))
        assert row["leaky_folds"] == ([1] if row["uses_synthetic"] else [])
        assert row["shortfall"] == ({"c": 6} if row["mix"] == "balance" else {})
        assert row["synthetic_fraction"] == (0.25 if row["uses_synthetic"] else 0.0)
        assert (row["verdict"] is None) == (row["mix"] == "real")


def test_a_controlnet_fingerprint_records_the_reading_rule(tmp_path):
    """`controlnet train` learns from the pairs' pixels as read: another rule is another ControlNet (it is retrained)."""
    pytest.importorskip("torch")
    from controlnet.train import Job, job_fingerprint
    from prompts.blobs import make_blob_pairs
    from prompts.normalize import Reading
    from prompts.pairs import read_pairs
    from prompts.schema.controlnet import ControlnetSection

    data = make_blob_pairs(tmp_path / "data", n=2, size=32, seed=0)
    cfg, data_cfg = ControlnetSection(), Data(str(data))
    cfg.model = "tiny"
    before = job_fingerprint(Job(None, read_pairs(data), data, tmp_path / "out", reading=Reading(normalize="percentile")), cfg, data_cfg)
    after = job_fingerprint(Job(None, read_pairs(data), data, tmp_path / "out", reading=Reading(normalize="none")), cfg, data_cfg)
    assert fingerprint.diff(before, after) == ["reading"]
    assert before["reading"]["normalize"] == "percentile" and after["reading"]["normalize"] == "none"
