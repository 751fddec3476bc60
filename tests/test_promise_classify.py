"""The promises `classify` keeps (issues 9 and 10), one test per promise, each one that failed before.

- it reads back every synthetic tree `generate` can write (odd weights, unicode classes);
- "P % of a class" rounds like `generate` (half up);
- it never writes into the data folder and never replaces a file unasked;
- bad split files and bad inputs are one line naming the file and key, with no TensorFlow lines before it;
- a corrupt feature-cache shard is recomputed, with one warning;
- a synthetic tree whose LoRAs saw a fold's test image is refused for that fold;
- a CV run records its fingerprint: an equal one reuses, a different one says what changed;
- `weights: none` says that its numbers mean nothing.

Small and fast: 12 images, EfficientNetB0 at 32 px, random weights, 1 epoch, 2 folds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts.normalize import DEFAULT
from tests.conftest import ROOT

from .helpers import tree_checksums as checksums

pytest.importorskip("keras")
pytest.importorskip("sklearn")

SIZE = 32
TINY = ["--backbone", "EfficientNetB0", "--image-size", SIZE, "--weights", "none", "--epochs", 1, "--no-augment",
        "--folds", 2, "--no-progress"]


def run_main(argv, capsys):
    """`python -m classify ARGV` in-process -> (exit code, stderr lines)."""
    from classify.__main__ import main

    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code or 0
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def one_error(argv, capsys, *must) -> str:
    """The command fails with exit status 2 and one stderr line `error: ...` holding every `must`."""
    code, err = run_main(argv, capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for m in must:
        assert m in err[0], err[0]
    return err[0]




def png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def data(class_data, tmp_path) -> Path:
    """A private copy of the 2-class data set (12 images), so a test may alter it."""
    return Path(shutil.copytree(class_data, tmp_path / "data"))


# ---------------------------------------------------------------- layout: every tree generate writes reads back


def test_synthetic_trees_with_odd_weights_and_unicode_classes_read_back(tmp_path):
    from classify.synthetic import read_synthetic
    from prompts.layout import synthetic_class_dir, weight_dir_name

    weights, classes = [1.0, 0.8, 1e-05, -0.5], ["Zelle_ß_é", "good"]
    root = tmp_path / "SYN"
    for fold in (None, 0, 1):
        for w in weights:
            for i, label in enumerate(classes):
                png(synthetic_class_dir(root, fold, w, label) / "0.png", seed=i)
    syn = read_synthetic(root, classes)
    assert syn.weights == [weight_dir_name(w) for w in sorted(weights, reverse=True)]
    assert sorted(syn.per_fold) == [0, 1] and set(syn.shared) == set(syn.weights)
    for w in weights:
        tree, leaky = syn.tree(1, weight_dir_name(w))
        assert not leaky and tree.classes == sorted(classes) and tree.root == root / "fold_1" / weight_dir_name(w)


def test_real_plus_p_rounds_half_up_like_generate():
    from classify.mixes import Item, build_training_set, parse_mixes
    from prompts.layout import count_of_fraction

    real = [Item(Path(f"r{i}"), "a", f"r{i}") for i in range(25)]
    synthetic = [Item(Path(f"s{i}"), "a", f"s{i}", "synthetic") for i in range(30)]
    (mix,) = parse_mixes(["real+50"])
    items, _ = build_training_set(mix, real, synthetic, ["a"], np.random.default_rng(0))
    made_by_generate = count_of_fraction(25, Fraction(1, 2))
    assert sum(it.source == "synthetic" for it in items) == made_by_generate == 13  # not 12 (half to even)


# ---------------------------------------------------------------- outputs never go into the data, never replace


@pytest.mark.parametrize("command", ["cv", "realism", "calibrate-weights", "split"])
@pytest.mark.parametrize("where", ["data", "inside", "existing-file"])
def test_outputs_never_go_into_the_data_or_over_a_file(command, where, data, tmp_path, capsys):
    syn = tmp_path / "SYN"
    png(syn / "w1.0" / "good" / "0.png", 0)
    user_file = tmp_path / "mine" / "photo.jpg.weights.h5"  # a file of the user's, any name
    user_file.parent.mkdir()
    user_file.write_bytes(b"\xff\xd8 the user's only copy")
    name = {"split": "folds.json", "calibrate-weights": "x.weights.h5"}.get(command, "out")
    output = {"data": data, "inside": data / "good" / name, "existing-file": user_file}[where]
    if command in ("calibrate-weights", "split") and where == "data":
        output = data / name
    before, mine = checksums(data), user_file.read_bytes()
    extra = {"cv": ["--mixes", "real"], "realism": ["--synthetic", syn], "split": ["--folds", 2]}.get(command, [])
    model = TINY[:6] if command in ("cv", "realism") else (TINY[:4] if command == "calibrate-weights" else [])
    code, err = run_main([command, "--data", data, "--output", output, *extra, *model], capsys)
    if command == "calibrate-weights" and where == "existing-file":
        assert code == 0  # an existing weights file is kept, never replaced
    else:
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert ("inside the data folder" in err[0]) if where != "existing-file" else ("exists" in err[0] or "existing file" in err[0])
    assert checksums(data) == before and user_file.read_bytes() == mine
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["photo.jpg.weights.h5"]


def test_split_replaces_its_file_only_with_overwrite(data, tmp_path, capsys):
    out = tmp_path / "folds.json"
    assert run_main(["split", "--data", data, "--folds", 2, "--output", out], capsys)[0] == 0
    first = out.read_bytes()
    one_error(["split", "--data", data, "--folds", 3, "--output", out], capsys, str(out), "--overwrite")
    assert out.read_bytes() == first
    assert run_main(["split", "--data", data, "--folds", 3, "--output", out, "--overwrite"], capsys)[0] == 0
    assert json.loads(out.read_text())["n_splits"] == 3


# ---------------------------------------------------------------- bad split files: one line naming file and key


@pytest.mark.parametrize(
    "fold, must",
    [
        ({"train": "good/good_0.png", "test": ["bad/bad_0.png"]}, "folds[0].train must be a list of image paths relative to the data folder, got a string"),
        ({"test": ["bad/bad_0.png"]}, "folds[0].train must be a list"),
        ({"train": ["good/good_0.png"], "test": {"a": 1}}, "folds[0].test must be a list"),
        ({"train": ["../../etc/passwd"], "test": ["bad/bad_0.png"]}, "no absolute path, no '..'"),
        ({"train": ["good/good_0.png"], "test": ["good/good_0.png"]}, "both train and test"),
        ("fold", "folds[0] must be a mapping"),
    ],
)
def test_bad_split_file_names_file_and_key(fold, must, data, tmp_path, capsys):
    bad = tmp_path / "folds.json"
    bad.write_text(json.dumps({"version": 1, "folds": [fold]}))
    one_error(["cv", "--data", data, "--split", bad, "--output", tmp_path / "out", "--mixes", "real", *TINY], capsys, str(bad), must)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- no TensorFlow lines before an error


def test_errors_are_not_preceded_by_tensorflow_lines(data, tmp_path):
    """A bad input found before Keras is needed never imports TensorFlow; one found after prints no TF lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KERAS"))}
    early = ("import sys\nfrom classify.__main__ import main\n"
             f"try:\n    main(['cv', '--data', {str(data)!r}, '--output', {str(data / 'o')!r}])\n"
             "except SystemExit as e:\n    assert e.code == 2\n"
             "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'\n")
    r = subprocess.run([sys.executable, "-c", early], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "inside the data folder" in r.stderr
    garbage = tmp_path / "b0.weights.h5"
    garbage.write_bytes(b"not an HDF5 file")
    argv = ["cv", "--data", data, "--output", tmp_path / "out", "--mixes", "real", *TINY]
    argv[argv.index("none")] = garbage
    r = subprocess.run([sys.executable, "-m", "classify", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --weights") and str(garbage) in lines[0], r.stderr[-3000:]


# ---------------------------------------------------------------- a corrupt cache shard is recomputed


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "mismatched"])
def test_corrupt_feature_shard_is_recomputed_with_one_warning(damage, data, tmp_path, caplog):
    from classify.features import PLAIN, Extractor, FeatureCache, ImageTable, _read_shard, compute_features
    from classify.model import build_base

    table = ImageTable.from_paths(sorted(data.rglob("*.png"))[:4], DEFAULT)
    base = build_base("EfficientNetB0", None, SIZE)
    cache = FeatureCache(tmp_path / "cache", "m")

    def features():
        return compute_features(table, [PLAIN], cache, Extractor(lambda: base, SIZE, batch_size=4), progress=False)[PLAIN]

    fresh = features()
    (shard,) = (tmp_path / "cache" / "m" / PLAIN).glob("*.npz")
    good = shard.read_bytes()
    if damage == "mismatched":
        np.savez(shard.with_suffix(".x.npz"), keys=np.array(table.keys[:3]), feats=np.zeros((2, 5), np.float32))
        shard.with_suffix(".x.npz").replace(shard)
    else:
        shard.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00not a zip", "empty": b""}[damage])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = features()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and shard.name in warnings[0] and "recomputed" in warnings[0], warnings
    np.testing.assert_allclose(again, fresh, rtol=1e-5, atol=0)
    assert _read_shard(shard)[0] == table.keys  # the same batch writes the same shard back
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        features()
    assert not caplog.records  # once repaired, no more warnings


# ---------------------------------------------------------------- the feature cache key


def test_feature_cache_key_follows_what_determines_the_features(tmp_path, monkeypatch):
    import keras

    from classify import model
    from classify.features import aug_views

    w = tmp_path / "b0.weights.h5"
    w.write_bytes(b"one")
    key = model.model_key("EfficientNetB0", str(w), 64, 0)
    assert model.model_key("EfficientNetB1", str(w), 64, 0) != key
    assert model.model_key("EfficientNetB0", str(w), 96, 0) != key
    assert model.model_key("EfficientNetB0", "none", 64, 0) != model.model_key("EfficientNetB0", "none", 64, 1)
    w.write_bytes(b"two")  # same file name, other weights
    assert model.model_key("EfficientNetB0", str(w), 64, 0) != key
    views = aug_views(2, seed=0)
    assert len(set(views)) == 2 and aug_views(2, seed=1)[0] != views[0]
    real_layers = model.augmentation_layers

    def stronger(seed=0):
        layers = real_layers(seed)
        layers[0] = keras.layers.RandomRotation(factor=0.3, seed=seed, name="augment_rotation")
        return layers

    monkeypatch.setattr(model, "augmentation_layers", stronger)
    assert aug_views(2, seed=0)[0] != views[0]  # other augmentation settings, other cached views


# ---------------------------------------------------------------- provenance: trees against the split


@pytest.fixture
def provenance(data, tmp_path):
    """(data, split, SYN with fold_0/w1.0 and fold_1/w1.0, a writer of each tree's fingerprint.json)."""
    from classify.folds import make_split
    from prompts import fingerprint
    from prompts.dataset import read_dataset
    from prompts.layout import FINGERPRINT_FILE, synthetic_class_dir

    ds = read_dataset(data)
    split = make_split(ds, 2, 1, None, 0)
    syn = tmp_path / "SYN"
    for k in (0, 1):
        for i, label in enumerate(ds.classes):
            for j in range(3):
                png(synthetic_class_dir(syn, k, 1.0, label) / f"{j}.png", seed=100 * k + 10 * i + j)

    def record(k: int, images: dict[str, str]) -> None:
        fp = fingerprint.make(settings={"steps": 1})
        fp["images"] = images
        fingerprint.write(syn / f"fold_{k}" / "w1.0" / FINGERPRINT_FILE, fp)

    def sha(rel: str) -> str:
        return hashlib.sha256((data / rel).read_bytes()).hexdigest()

    for k in (0, 1):  # honest: each fold's LoRAs saw only that fold's training images
        record(k, {p: sha(p) for p in split.folds[k].train})
    return data, split, syn, record, sha


def _plan(data, split, syn, mixes="real,real+50"):
    from classify.cv import plan_jobs
    from classify.mixes import parse_mixes
    from classify.synthetic import read_synthetic
    from prompts.dataset import read_dataset
    from prompts.schema import ClassifySection

    ds = read_dataset(data)
    return plan_jobs(ds, split, parse_mixes(mixes), read_synthetic(syn, ds.classes), ClassifySection(), DEFAULT)


def test_tree_trained_on_a_test_image_is_refused(provenance, tmp_path, capsys):
    from prompts.errors import UserError
    from prompts.splits import write_split

    data, split, syn, record, sha = provenance
    assert len(_plan(data, split, syn)) == 2 * 2  # honest trees pass
    victim = split.folds[1].test[0]
    record(1, {**{p: sha(p) for p in split.folds[1].train}, victim: sha(victim)})  # by path
    with pytest.raises(UserError, match=rf"fold_1's test image {victim}") as err:
        _plan(data, split, syn)
    assert str(syn / "fold_1" / "w1.0") in str(err.value)
    record(1, {**{p: sha(p) for p in split.folds[1].train}, "elsewhere/renamed.png": sha(victim)})  # by content
    with pytest.raises(UserError, match=r"same content"):
        _plan(data, split, syn)
    assert len(_plan(data, split, syn, mixes="real")) == 2  # a run that uses no synthetic image is not refused
    write_split(tmp_path / "folds.json", split)
    before = checksums(data)
    one_error(["cv", "--data", data, "--split", tmp_path / "folds.json", "--synthetic", syn, "--output", tmp_path / "out",
               "--mixes", "real", "real+50", *TINY], capsys, "fold_1", victim, str(syn / "fold_1" / "w1.0"))
    assert checksums(data) == before and not (tmp_path / "out").exists()


def test_tree_without_a_record_is_warned_about_once(provenance, caplog):
    from prompts.layout import FINGERPRINT_FILE

    data, split, syn, _, _ = provenance
    for k in (0, 1):
        (syn / f"fold_{k}" / "w1.0" / FINGERPRINT_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        _plan(data, split, syn, mixes="real+50,synthetic")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "2 synthetic tree(s)" in warnings[0] and "cannot check" in warnings[0], warnings


# ---------------------------------------------------------------- a CV run's fingerprint


def test_cv_run_records_its_fingerprint_and_says_what_changed(data, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    argv = ["cv", "--data", data, "--output", out, "--mixes", "real", "--cache-dir", tmp_path / "cache", *TINY]
    before = checksums(data)
    with caplog.at_level(logging.WARNING):
        code, err = run_main(argv, capsys)
    assert code == 0, err
    assert any("weights is none" in r.getMessage() and "meaningless" in r.getMessage() for r in caplog.records)  # never a silent none
    fp = json.loads((out / "fingerprint.json").read_text())
    assert {"data", "split", "model", "settings.epochs", "settings.seed"} <= set(fp["parts"])
    results = out / "results.json"
    first = json.loads(results.read_text())
    assert first["timing"]["runs_trained"] == 2
    assert run_main(argv, capsys)[0] == 0  # equal fingerprint: everything reused
    assert json.loads(results.read_text())["timing"]["runs_reused"] == 2
    epochs = argv.index("--epochs") + 1
    changed = argv[:epochs] + [2] + argv[epochs + 1:]
    one_error(changed, capsys, "settings.epochs", "--overwrite")
    png(data / "good" / "good_0.png", seed=99)  # a data image changed on disk
    one_error(argv, capsys, "data changed", "--overwrite")
    code, err = run_main([*changed, "--overwrite"], capsys)
    assert code == 0, err
    again = json.loads(results.read_text())
    assert again["settings"]["epochs"] == 2 and again["timing"]["runs_trained"] == 2
    after = checksums(data)
    assert set(after) == set(before) and {k for k in before if before[k] != after[k]} == {"good/good_0.png"}


def test_cv_refuses_a_folder_holding_foreign_results(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    one_error(["cv", "--data", data, "--output", out, "--mixes", "real", *TINY], capsys, "report.md", "--overwrite")
    assert (out / "report.md").read_text() == "my own notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]
