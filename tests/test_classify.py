"""classify: folds, mixes, leakage, cached vs naive, reports, realism, both Keras backends, bad input.

Offline and on CPU: EfficientNetB0 at 64 px with random weights whose BatchNorm
statistics are calibrated on the demo images (`write_calibrated_weights`), so
features are informative enough for the classifier to predict more than one class.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from prompts.normalize import DEFAULT
from tests.conftest import ROOT, shared_data

pytest.importorskip("keras")
pytest.importorskip("sklearn")

SIZE = 64


def run_main(argv, capsys):
    """Run `python -m classify` in-process -> (exit code, stderr lines)."""
    from classify.__main__ import main

    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip() and not l.startswith(("I0000", "WARNING: All log"))]
    return code, err


def bad_input(argv, capsys, *must):
    code, err = run_main(argv, capsys)
    errors = [l for l in err if l.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    for m in must:
        assert m in errors[0], errors[0]
    return errors[0]


def write_tree(root: Path, per_class: dict, seed: int) -> Path:
    from prompts.demo import write_demo_dataset

    return write_demo_dataset(root, per_class=per_class, cell_lines=["A549"], size=SIZE, seed=seed)


@pytest.fixture(scope="session")
def weights(demo_data, tmp_path_factory) -> Path:
    from classify.model import write_calibrated_weights
    from classify.pixels import load_pixels

    paths = sorted(demo_data.rglob("*.png"))
    return write_calibrated_weights("EfficientNetB0", SIZE, load_pixels(paths, SIZE, DEFAULT), tmp_path_factory.mktemp("w") / "b0.weights.h5")


@pytest.fixture(scope="session")
def syn(tmp_path_factory) -> Path:
    """fold_<k>/w1.0/ for the 5 folds, and a shared w0.8/ (leaky)."""
    root = tmp_path_factory.mktemp("syn") / "SYN"
    per = {"good": 3, "acceptable": 3, "bad": 4}
    for k in range(5):
        write_tree(root / f"fold_{k}" / "w1.0", per, seed=100 + k)
    write_tree(root / "w0.8", per, seed=200)
    (root / "manifest.jsonl").write_text("")
    return root


def model_flags(weights, cache):
    return ["--backbone", "EfficientNetB0", "--weights", weights, "--image-size", SIZE, "--cache-dir", cache, "--no-progress"]


# ---------------------------------------------------------------- folds


def test_split_disjoint_stratified_repeated(demo_data, tmp_path, capsys):
    from prompts.dataset import read_dataset
    from prompts.splits import read_split

    out = tmp_path / "folds.json"
    code, err = run_main(["split", "--data", demo_data, "--folds", 3, "--repeats", 2, "--seed", 1, "--output", out], capsys)
    assert code in (0, None), err
    ds = read_dataset(demo_data)
    split = read_split(out, ds)
    assert len(split.folds) == 6 and split.repeats == 2
    labels = {r.path: r.label for r in ds.records}
    for rep in range(2):
        folds = [f for f in split.folds if f.repeat == rep]
        tests = [set(f.test) for f in folds]
        assert sum(len(t) for t in tests) == len(ds.records)
        assert set().union(*tests) == set(labels)  # every image tested exactly once per repeat
        for f in folds:
            assert not set(f.train) & set(f.test)
            assert set(f.train) | set(f.test) == set(labels)
            per = Counter(labels[p] for p in f.test)
            for c, n in ds.class_counts().items():
                assert abs(per[c] - n / 3) <= 1, (c, per)
    assert [f.test for f in split.folds[:3]] != [f.test for f in split.folds[3:]]  # repeats reshuffle


def test_split_grouped_rbc3_by_source_image(tmp_path):
    from classify.folds import make_split
    from prompts.dataset import read_dataset

    ds = read_dataset(shared_data("rbc3"))
    split = make_split(ds, 5, 1, "source_image", seed=0)
    group = {r.path: r.get("source_image") for r in ds.records}
    seen = {}
    for f in split.folds:
        for p in f.test:
            assert seen.setdefault(group[p], f.index) == f.index  # a smear lies in one test fold
        assert not {group[p] for p in f.train} & {group[p] for p in f.test}
        assert set(Counter(r.label for r in ds.records if r.path in set(f.test))) == set(ds.classes)


# ---------------------------------------------------------------- mixes


def test_mix_counts_per_class():
    from classify.mixes import Item, build_training_set, parse_mixes

    classes = ["a", "b", "c"]
    real = [Item(Path(f"r{c}{i}"), c, f"r{c}{i}") for c, n in (("a", 20), ("b", 10), ("c", 4)) for i in range(n)]
    synthetic = [Item(Path(f"s{c}{i}"), c, f"s{c}{i}", "synthetic") for c in classes for i in range(12)]
    rng = np.random.default_rng(0)

    def count(items, source):
        return {c: sum(1 for it in items if it.label == c and it.source == source) for c in classes}

    mixes = {m.name: m for m in parse_mixes("real,real+50,real+100,synthetic,balance,oversample")}
    items, short = build_training_set(mixes["real+50"], real, synthetic, classes, rng)
    assert count(items, "real") == {"a": 20, "b": 10, "c": 4} and count(items, "synthetic") == {"a": 10, "b": 5, "c": 2}
    items, short = build_training_set(mixes["real+100"], real, synthetic, classes, rng)
    assert count(items, "synthetic") == {"a": 12, "b": 10, "c": 4} and short == {"a": 8}
    items, _ = build_training_set(mixes["synthetic"], real, synthetic, classes, rng)
    assert count(items, "real") == {"a": 0, "b": 0, "c": 0} and count(items, "synthetic") == {"a": 12, "b": 10, "c": 4}
    items, _ = build_training_set(mixes["balance"], real, synthetic, classes, rng)
    assert count(items, "synthetic") == {"a": 0, "b": 10, "c": 12}
    items, _ = build_training_set(mixes["oversample"], real, synthetic, classes, rng)
    assert Counter(it.label for it in items) == {"a": 20, "b": 20, "c": 20} and count(items, "synthetic") == {"a": 0, "b": 0, "c": 0}
    assert len({it.key for it in items if it.label == "c"}) == 4  # duplicates of the real minority only


def test_minority_fraction_subsamples_only_the_minority():
    from classify.mixes import Item, subsample_minority

    real = [Item(Path(f"{c}{i}"), c, f"{c}{i}") for c, n in (("a", 50), ("b", 30)) for i in range(n)]
    kept = subsample_minority(real, 0.1, None, np.random.default_rng(0))
    assert Counter(it.label for it in kept) == {"a": 50, "b": 5}


# ---------------------------------------------------------------- the protocol


@pytest.fixture(scope="session")
def cv_run(demo_data, syn, weights, tmp_path_factory):
    """One cached CV run without augmentation: 5 folds, two synthetic trees, several mixes."""
    from classify.__main__ import main

    base = tmp_path_factory.mktemp("cv")
    out, cache = base / "out", base / "cache"
    argv = ["cv", "--data", demo_data, "--synthetic", syn, "--output", out, "--mixes", "real,real+50,synthetic,balance,classweight",
            "--epochs", 8, "--no-augment", "--seed", 3, *model_flags(weights, cache)]
    main([str(a) for a in argv])
    return out, argv


def test_cv_uses_fold_specific_synthetic_sets(cv_run):
    out, _ = cv_run
    res = json.loads((out / "results.json").read_text())
    assert set(res["tables"]) == {"w1.0", "w0.8"}
    for k in range(5):
        own = json.loads((out / "runs" / "w1.0" / "real+50" / f"fold_{k}.json").read_text())
        assert Path(own["synthetic_tree"]).parts[-2:] == (f"fold_{k}", "w1.0") and own["leaky"] is False
        shared = json.loads((out / "runs" / "w0.8" / "real+50" / f"fold_{k}.json").read_text())
        assert Path(shared["synthetic_tree"]).name == "w0.8" and shared["leaky"] is True
        assert shared["counts"]["synthetic"] and "synthetic" not in json.loads((out / "runs" / "real" / "real" / f"fold_{k}.json").read_text())["counts"]
    report = (out / "report.md").read_text()
    assert "the generator saw the test images (LoRA weight 0.8)" in report
    assert "the generator saw the test images (LoRA weight 1.0)" not in report


def test_cv_report_tables_hold_the_computed_numbers(cv_run):
    out, _ = cv_run
    res = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in html and "src=\"http" not in html
    for tree in ("w1.0", "w0.8"):
        section = report.split(f"## LoRA weight {tree[1:]}")[1].split("\n## ")[0].split("Per-class F1")[0]
        for mix in ("real", "real+50", "synthetic", "balance", "classweight"):
            sub = "real" if mix in ("real", "classweight") else tree
            accs = [json.loads((out / "runs" / sub / mix / f"fold_{k}.json").read_text())["metrics"]["accuracy"] for k in range(5)]
            f1s = [json.loads((out / "runs" / sub / mix / f"fold_{k}.json").read_text())["metrics"]["f1"] for k in range(5)]
            line = next(l for l in section.splitlines() if l.startswith(f"| {mix} |"))
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            assert cells[1] == f"{np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}"
            assert cells[4] == f"{np.mean(f1s):.3f} ± {np.std(f1s, ddof=1):.3f}"
            assert f"{np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}" in html
        best = max(r["metrics"]["accuracy"]["mean"] for r in res["tables"][tree])
        assert f"**{best:.3f} ±" in section
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5
    preds = {tuple(json.loads((out / "runs" / "real" / "real" / f"fold_{k}.json").read_text())["y_pred"]) for k in range(5)}
    assert len({p for t in preds for p in t}) > 1  # the classifier predicts more than one class


def test_cv_resume_reuses_finished_runs(cv_run, capsys):
    out, argv = cv_run
    before = (out / "results.csv").read_text()
    code, err = run_main(argv, capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["timing"]["runs_trained"] == 0 and res["timing"]["runs_reused"] == 5 * (2 + 3 * 2)
    assert (out / "results.csv").read_text() == before


def test_second_phase_unfreezes_top_layers_and_runs(class_data, weights, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main(["cv", "--data", class_data, "--output", out, "--mixes", "real", "--folds", 2, "--epochs", 2, "--no-augment",
                          "--fine-tune-layers", 8, "--fine-tune-epochs", 1, *model_flags(weights, tmp_path / "cache")], capsys)
    assert code in (0, None), err
    runs = [json.loads((out / "runs" / "real" / "real" / f"fold_{k}.json").read_text()) for k in range(2)]
    assert all(len(r["y_pred"]) == r["n_test"] == 6 for r in runs)


def test_no_synthetic_image_enters_a_test_fold(demo_data, syn, tmp_path):
    from classify.cv import plan_jobs
    from classify.folds import make_split
    from classify.mixes import parse_mixes
    from classify.synthetic import read_synthetic
    from prompts.dataset import read_dataset
    from prompts.errors import UserError
    from prompts.schema import ClassifySection

    ds = read_dataset(demo_data)
    split = make_split(ds, 5, 1, None, 0)
    cls = ClassifySection()
    jobs = plan_jobs(ds, split, parse_mixes("real+100,synthetic,balance"), read_synthetic(syn, ds.classes), cls, DEFAULT)
    assert len(jobs) == 5 * 3 * 2  # folds x mixes x trees
    for job in jobs:
        assert not {it.key for it in job.train if it.source == "synthetic"} & {it.key for it in job.test}
        assert [it.path.relative_to(ds.root).as_posix() for it in job.test] == list(split.folds[job.fold.index].test)
        assert {it.source for it in job.test} == {"real"}
    # a synthetic folder that holds a copy of a real image is refused for the fold that tests that image
    leaky = tmp_path / "SYN"
    shutil.copytree(syn / "w0.8", leaky / "w1.0")
    victim = ds.records[0]
    shutil.copy(demo_data / victim.path, leaky / "w1.0" / "A549" / victim.label / "copy.png")
    with pytest.raises(UserError, match="synthetic images must never enter a test fold"):
        plan_jobs(ds, split, parse_mixes("real+100"), read_synthetic(leaky, ds.classes), cls, DEFAULT)


def test_cached_and_naive_paths_give_the_same_metrics(demo_data, syn, weights, tmp_path, capsys):
    outs = {}
    for name, extra in (("cached", []), ("naive", ["--no-feature-cache"])):
        outs[name] = tmp_path / name
        code, err = run_main(["cv", "--data", demo_data, "--synthetic", syn, "--output", outs[name], "--mixes", "real,real+50",
                              "--folds", 2, "--epochs", 3, "--no-augment", *model_flags(weights, tmp_path / "cache"), *extra], capsys)
        assert code in (0, None), err
    for tree, mix in (("real", "real"), ("w1.0", "real+50"), ("w0.8", "real+50")):
        for k in range(2):
            a, b = (json.loads((outs[n] / "runs" / tree / mix / f"fold_{k}.json").read_text()) for n in ("cached", "naive"))
            assert a["y_pred"] == b["y_pred"]
            assert a["metrics"] == b["metrics"]
            np.testing.assert_allclose(a["probs"], b["probs"], atol=2e-3)


def test_augmented_views_are_cached_reproducible_and_distinct(demo_data, weights, tmp_path):
    from classify.features import PLAIN, Extractor, FeatureCache, ImageTable, aug_views, compute_features
    from classify.model import build_base

    paths = sorted(demo_data.rglob("*.png"))[:5]
    table = ImageTable.from_paths(paths, DEFAULT)
    views = [PLAIN, *aug_views(2, seed=0)]

    def features(cache_dir, order):
        t = ImageTable([table.keys[i] for i in order], [table.paths[i] for i in order], DEFAULT)
        ex = Extractor(lambda: build_base("EfficientNetB0", str(weights), SIZE), SIZE, batch_size=2)
        f = compute_features(t, views, FeatureCache(cache_dir, "m"), ex, progress=False)
        return {v: {k: f[v][i] for i, k in enumerate(t.keys)} for v in views}

    a = features(tmp_path / "c1", range(5))
    assert sorted(p.name for p in (tmp_path / "c1" / "m").iterdir()) == sorted(views)
    b = features(tmp_path / "c2", [4, 2, 0, 3, 1])  # other order and batches: same views
    for v in views:
        for k in table.keys:
            np.testing.assert_allclose(a[v][k], b[v][k], atol=1e-4)
    k = table.keys[0]
    assert np.abs(a[views[1]][k] - a[PLAIN][k]).max() > 1e-3
    assert np.abs(a[views[1]][k] - a[views[2]][k]).max() > 1e-3


# ---------------------------------------------------------------- statistics


def test_corrected_ttest_is_more_conservative_than_the_plain_one():
    from scipy import stats as sps

    from analysis.stats import corrected_ttest, wilcoxon_floor

    d = np.array([0.02, 0.03, 0.01, 0.04, 0.02])
    t, p = corrected_ttest(d, n_train=80, n_test=20)
    assert p > sps.ttest_1samp(d, 0).pvalue
    assert t == pytest.approx(d.mean() / np.sqrt((1 / 5 + 20 / 80) * d.var(ddof=1)))
    assert wilcoxon_floor(5) == 0.0625 == pytest.approx(sps.wilcoxon(d).pvalue)


# ---------------------------------------------------------------- realism


@pytest.fixture(scope="session")
def realism_run(demo_data, weights, tmp_path_factory):
    from classify.__main__ import main

    base = tmp_path_factory.mktemp("realism")
    syn_dir = base / "SYN"
    shutil.copytree(demo_data, syn_dir / "w1.0")  # identical to the real images
    for label, look in (("good", "bad"), ("bad", "good"), ("acceptable", "bad")):  # every class drawn with another class's look
        src = [p for p in sorted(demo_data.rglob("*.png")) if p.parent.name == look]
        (syn_dir / "w0.5" / label).mkdir(parents=True)
        for i, p in enumerate(src[:9]):
            shutil.copy(p, syn_dir / "w0.5" / label / f"{i}.png")
    main([str(a) for a in ["realism", "--data", demo_data, "--synthetic", syn_dir, "--output", base / "out",
                           *model_flags(weights, base / "cache")]])
    return base / "out"


def test_realism_separates_identical_from_different_sets(realism_run):
    res = json.loads((realism_run / "realism.json").read_text())
    rows = {(r["weight"], r["class"]): r for r in res["rows"]}
    for c in ("good", "bad"):
        same, other = rows[("1.0", c)], rows[("0.5", c)]
        assert same["kid"] <= 0 < other["kid"]
        assert same["c2st_accuracy"] == pytest.approx(0.5, abs=0.05)  # copies are kept in one CV fold
        assert other["c2st_accuracy"] >= 0.75
        assert same["n_copies"] == same["n_real"] and other["n_copies"] == 0
    assert "| 0.5 | good |" in (realism_run / "realism.md").read_text()


def test_cv_report_includes_realism(cv_run, realism_run):
    from classify.report import load_realism, report_html, report_markdown

    out, _ = cv_run
    res = json.loads((out / "results.json").read_text())
    realism = load_realism(realism_run)
    assert "## Realism" in report_markdown(res, realism) and "two-sample classifier" in report_html(res, realism)


# ---------------------------------------------------------------- backends


def test_tensorflow_backend_trains_without_importing_torch(demo_data, weights):
    code = (
        "import sys, numpy as np\n"
        "import classify.cv, classify.realism, classify.report, classify.__main__\n"
        "from classify.model import build_base, build_head, build_full, compile_model, unfreeze_top\n"
        "from classify.train import train, predict\n"
        "import keras\n"
        "assert keras.backend.backend() == 'tensorflow'\n"
        "x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype('float32'); y = np.array([0, 1, 0, 1])\n"
        "base = build_base('EfficientNetB0', 'none', 32)\n"
        "m = build_full(base, build_head(base.output_shape[-1], 2), 32, augment=True); compile_model(m)\n"
        "train(m, lambda e, i: x[i], y, 2, epochs=1, batch_size=2, seed=0)\n"
        "assert predict(m, x, 2).shape == (4, 2)\n"
        "n = unfreeze_top(base, 10); assert 0 < n <= 10\n"
        "assert not any(l.trainable for l in base.layers if isinstance(l, keras.layers.BatchNormalization))\n"
        "assert 'torch' not in sys.modules, 'classify imported torch'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_torch_backend_builds_and_trains_the_model():
    pytest.importorskip("torch")
    code = (
        "import sys, numpy as np\n"
        "from classify.model import build_base, build_head, build_full, compile_model\n"
        "from classify.train import train, predict\n"
        "from classify.features import Extractor\n"
        "import keras\n"
        "assert keras.backend.backend() == 'torch'\n"
        "x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype('float32'); y = np.array([0, 1, 0, 1])\n"
        "base = build_base('EfficientNetB0', 'none', 32)\n"
        "m = build_full(base, build_head(base.output_shape[-1], 2), 32, augment=True); compile_model(m)\n"
        "train(m, lambda e, i: x[i], y, 2, epochs=1, batch_size=2, seed=0)\n"
        "p = predict(m, x, 2); assert p.shape == (4, 2) and np.allclose(p.sum(1), 1, atol=1e-4)\n"
        "ex = Extractor(lambda: base, 32); f = ex.features(x); a = ex.augment(x, ['k'] * 4, 'aug0-s0')\n"
        "assert f.shape == (4, base.output_shape[-1]) and a.shape == x.shape\n"
        "h = build_head(f.shape[1], 2); compile_model(h); train(h, lambda e, i: f[i], y, 2, 2, 2, 0)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ---------------------------------------------------------------- bad input: one line, exit 2


def test_bad_class_with_fewer_images_than_folds(class_data, tmp_path, capsys):
    bad_input(["split", "--data", class_data, "--folds", 7, "--output", tmp_path / "f.json"], capsys, "class 'bad' has 6 image(s)", "--folds 7")


def test_bad_synthetic_class_missing_in_real_data(demo_data, tmp_path, capsys):
    write_tree(tmp_path / "SYN" / "w1.0", {"good": 2, "blurry": 2}, seed=1)
    bad_input(["cv", "--data", demo_data, "--synthetic", tmp_path / "SYN", "--output", tmp_path / "o"], capsys,
              "synthetic class 'blurry'", "not a class of the real data")


def test_bad_empty_synthetic_folder(demo_data, tmp_path, capsys):
    (tmp_path / "SYN" / "w1.0" / "good").mkdir(parents=True)
    bad_input(["cv", "--data", demo_data, "--synthetic", tmp_path / "SYN", "--output", tmp_path / "o"], capsys, "holds no images")
    bad_input(["cv", "--data", demo_data, "--synthetic", tmp_path / "SYN" / "w1.0" / "good", "--output", tmp_path / "o"], capsys, "is empty")


def test_bad_split_made_for_other_data(demo_data, class_data, tmp_path, capsys):
    run_main(["split", "--data", class_data, "--folds", 2, "--output", tmp_path / "f.json"], capsys)
    bad_input(["cv", "--data", demo_data, "--split", tmp_path / "f.json", "--output", tmp_path / "o", "--mixes", "real"], capsys,
              "does not match data folder")


def test_bad_corrupt_image_is_named(class_data, weights, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(class_data, data)
    (data / "bad" / "broken.png").write_bytes(b"not a png")
    bad_input(["cv", "--data", data, "--output", tmp_path / "o", "--mixes", "real", "--folds", 2, "--no-augment",
               *model_flags(weights, tmp_path / "cache")], capsys, "broken.png", "cannot decode")


@pytest.mark.parametrize("case", ["imagenet offline", "no such file", "not a weights file", "another backbone"])
def test_bad_weights(case, class_data, weights, tmp_path, capsys, monkeypatch):
    """Every bad --weights is one line naming what to do, and nothing is written."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not HDF5")
    value, backbone, must = {
        "imagenet offline": ("imagenet", "EfficientNetB0", ["efficientnetb0_notop.h5", str(tmp_path / "keras" / "models")]),
        "no such file": (tmp_path / "none.weights.h5", "EfficientNetB0", ["no such file"]),
        "not a weights file": (garbage, "EfficientNetB0", [str(garbage), "cannot load"]),
        "another backbone": (weights, "EfficientNetB1", [str(weights), "cannot load into EfficientNetB1"]),
    }[case]
    bad_input(["cv", "--data", class_data, "--output", tmp_path / "o", "--mixes", "real", "--folds", 2, "--no-augment",
               "--backbone", backbone, "--weights", value, "--image-size", 32, "--cache-dir", tmp_path / "c", "--no-progress"],
              capsys, *must)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, must",
    [
        (["--mixes", "real,real+x"], "unknown mix"),
        (["--mixes", "real,real+25"], "need synthetic images"),
        (["--mixes", "real", "--backbone", "ResNet50"], "ResNet50"),
    ],
)
def test_bad_flags(class_data, tmp_path, capsys, argv, must):
    bad_input(["cv", "--data", class_data, "--output", tmp_path / "o", "--folds", 2, "--image-size", 32,
               "--cache-dir", tmp_path / "c", "--no-progress", *argv], capsys, must)
