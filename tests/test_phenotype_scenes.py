"""Composed co-culture scenes with exactly known cells: end-to-end runs of `python -m phenotype cv`, the
zero-shot counting tolerance, detection with predicted segmentation, and the no-leak check.

Real cells: red blood cells of three classes cut by threshold out of `../shared/data/rbc3` (skipped when
absent). Cells that differ clearly in size and intensity: numpy-drawn (the rbc3 classes differ in shape
more than in size or brightness, so they do not make the tolerance test's scenes)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from prompts.errors import UserError
from prompts.normalize import DEFAULT
from tests.conftest import SHARED_DATA

# unit tier by default (tests/conftest.py); the slow test below marks itself workflow

# ../shared/data beside the repository (tests.conftest); CELLSYNTH_SHARED_DATA points elsewhere (a git worktree)
SHARED = Path(os.environ.get("CELLSYNTH_SHARED_DATA") or SHARED_DATA)
RBC = SHARED / "rbc3" if (SHARED / "rbc3").is_dir() else None
TOLERANCE_PP = 5.0  # zero-shot proportion error on clearly different types: mean over folds, in percentage points


def _section(**kw):
    from prompts.schema.phenotype import PhenotypeSection

    base = dict(models=["reference"], trees=50, folds=3, k=[1, 2], crop_size=40, overlays=1)
    base.update(kw)
    return PhenotypeSection(**base)


def _data_section(root):
    from prompts.schema.data import DataSection

    return DataSection(data=str(root))


@pytest.fixture(scope="module")
def clear_types(tmp_path_factory):
    """Small bright cells against large dark ones, numpy-drawn, in the room's layout."""
    from phenotype.scenes import synthetic_cell, write_study_data

    rng = np.random.default_rng(0)
    pools = {"small_bright": [synthetic_cell(5, 220, "small_bright", rng) for _ in range(20)],
             "large_dark": [synthetic_cell(11, 90, "large_dark", rng) for _ in range(20)]}
    root = tmp_path_factory.mktemp("clear") / "data"
    truth = write_study_data(root, pools, mono_images=2, co_images=6, cells_per_image=10, size=(128, 128), background=30, seed=1)
    return root, truth


@pytest.fixture(scope="module")
def rbc_scenes(tmp_path_factory):
    if RBC is None:
        pytest.skip(f"real data {SHARED / 'rbc3'} is absent")
    from phenotype.scenes import cells_from_folder, write_study_data

    pools = {c: cells_from_folder(RBC / c, c, limit=15) for c in ("normal", "spherocyte", "target_cell")}
    root = tmp_path_factory.mktemp("rbc") / "data"
    truth = write_study_data(root, pools, mono_images=2, co_images=6, cells_per_image=8, size=(200, 200), seed=2)
    return root, truth


def test_scenes_know_masks_types_and_counts_exactly(rbc_scenes):
    from phenotype.data import read_data
    from prompts.pairs import load_mask

    root, truth = rbc_scenes
    data = read_data(root)
    assert data.types == ["normal", "spherocyte", "target_cell"] and len(data.co) == 6
    for im in data.co:
        labels = load_mask(im.mask)
        assert set(np.unique(labels[labels > 0]).tolist()) == set(im.cell_types)
        got = {}
        for t in im.cell_types.values():
            got[t] = got.get(t, 0) + 1
        assert got == truth[im.name]
    for im in data.mono:  # one class per monoculture
        assert im.mono_type == Path(im.name).parts[1]


def test_zero_shot_counts_clearly_different_types_within_tolerance(clear_types, tmp_path):
    from phenotype.cv import run_cv

    root, _ = clear_types
    results = run_cv(_data_section(root), _section(regimes=["zero-shot"], output=str(tmp_path / "out")))
    s = results["summary"]["reference"]["zero-shot"]
    assert s["proportion_error"]["mean"] <= TOLERANCE_PP, s
    assert s["balanced_accuracy"]["mean"] >= 0.9, s


def test_classical_segmentation_splits_count_errors_into_misses_and_wrong_types(clear_types, tmp_path):
    """Otsu's one threshold between a dark background, dim and bright cells loses some dim cells here: detection
    F1 (summed tp/fp/fn of each fold's test images, as `analysis.matching` gives them) says so, while every
    detected cell is typed right, so the whole counting error is "missed the cell", not "wrong type"."""
    from analysis.matching import Match, matching
    from phenotype.cells import classical_labels, image_array
    from phenotype.cv import run_cv
    from prompts.pairs import load_mask

    root, _ = clear_types
    ph = _section(regimes=["zero-shot"], segmentation="classical", min_size=10, output=str(tmp_path / "out"))
    results = run_cv(_data_section(root), ph)
    assert results["segmentation"] == "classical"
    for run, fold in zip(results["runs"], results["folds"]):
        direct = sum((matching(load_mask(root / n.replace("/images/", "/masks/")),
                               classical_labels(image_array(root / n, DEFAULT), ph.min_size, ph.min_distance)) for n in fold["test"]), Match())
        m = run["metrics"]
        assert (m["tp"], m["fp"], m["fn"]) == (direct.tp, direct.fp, direct.fn)
        assert m["detection_f1"] == pytest.approx(direct.f1) and m["balanced_accuracy"] == 1.0
    assert sum(r["metrics"]["fn"] for r in results["runs"]) > 0


def test_no_test_crop_reaches_any_folds_classifier(rbc_scenes):
    from phenotype.cv import StudyCells, collect_cells, regime_training_cells, test_keys
    from phenotype.data import read_data
    from phenotype.regimes import make_folds, regime_names

    root, _ = rbc_scenes
    data = read_data(root)
    ph = _section()
    cells: StudyCells = collect_cells(data, ph, DEFAULT)
    folds = make_folds([im.name for im in data.co], None, 3, 2, 0)
    for fold in folds:
        keys = test_keys(fold, cells)
        assert keys  # the check compares something
        for regime in regime_names(["zero-shot", "retrained", "co-only"], [1, 2]):
            train, images = regime_training_cells(regime, fold, cells, ph.seed)
            assert not set(images) & set(fold.test)
            assert not {c.key for c in train} & keys, (fold.index, regime)
            assert {c.image for c in train} & set(fold.test) == set()


def test_a_co_culture_image_copied_into_a_monoculture_is_caught(rbc_scenes, tmp_path, capsys):
    """The same pixels under two names: the sha256 check stops the run before any classifier sees them."""
    from phenotype.__main__ import main

    root = tmp_path / "data"
    shutil.copytree(rbc_scenes[0], root)
    for sub in ("images", "masks"):
        shutil.copy(root / "co" / sub / "co_0.png", root / "mono" / "normal" / sub / "leaked.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--data", str(root), "--output", str(tmp_path / "out"), "--models", "reference", "--folds", "3",
              "--k", "1", "--crop-size", "40", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "test crop(s)" in err[0], err
    assert not (tmp_path / "out").exists()  # found before anything was written


def test_every_regime_end_to_end_writes_the_reports(rbc_scenes, tmp_path):
    from phenotype.__main__ import main

    root, _ = rbc_scenes
    out = tmp_path / "out"
    assert main(["cv", "--data", str(root), "--output", str(out), "--models", "reference", "--folds", "3", "--k", "1", "2",
                 "--crop-size", "48", "--trees", "50", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["regimes"] == ["zero-shot", "retrained-k1", "retrained-k2", "co-only"]
    assert {(r["regime"], r["fold"]) for r in results["runs"]} == {(g, f) for g in results["regimes"] for f in range(3)}
    assert [c["regime"] for c in results["comparisons"]] == ["retrained-k1", "retrained-k2", "co-only"]
    for r in results["runs"]:
        assert len(r["train_images"]) == {"zero-shot": 0, "retrained-k1": 1, "retrained-k2": 2, "co-only": 4}[r["regime"]]
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].startswith("**reference (regionprops + random forest):** zero-shot counts")
    assert "Counts per image" in md and (out / "overlays").is_dir() and any((out / "overlays").iterdir())
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "retrained-k2" in html
    # one more regime reuses every cached feature: a second run adds nothing to the cache
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    assert main(["cv", "--data", str(root), "--output", str(out), "--models", "reference", "--folds", "3", "--k", "1", "2", "3",
                 "--crop-size", "48", "--trees", "50", "--no-progress", "--overwrite"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == before


def test_a_second_run_reuses_every_run_and_other_inputs_are_refused_without_overwrite(rbc_scenes, tmp_path, capsys):
    """The study protocol's reuse: the same inputs again reuse every saved run; another setting (or reading rule) into
    the same OUT is one line naming --overwrite, and with it only the runs whose inputs changed are recomputed."""
    from phenotype.__main__ import main

    root, _ = rbc_scenes
    out = tmp_path / "out"
    args = ["cv", "--data", str(root), "--output", str(out), "--models", "reference", "--folds", "3", "--regimes", "zero-shot",
            "--crop-size", "40", "--trees", "10", "--no-progress"]
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["runs_reused"] == 3 and again["timing"]["runs_trained"] == 0
    assert again["summary"] == first["summary"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:-1], "--trees", "11", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "--overwrite (phenotype.overwrite: true)" in err[-1], err


@pytest.mark.workflow
@pytest.mark.slow  # about a minute on 2 shared CPU cores: Keras builds EfficientNetB0 and trains heads
def test_cnn_on_the_tiny_size_runs_beside_the_reference(clear_types, tmp_path):
    """The Keras path: EfficientNetB0 with calibrated random weights at 32 px, a few head epochs."""
    from phenotype.cv import run_cv

    root, _ = clear_types
    results = run_cv(_data_section(root), _section(models=["reference", "cnn"], regimes=["zero-shot", "co-only"], weights="calibrated",
                                                   cnn_size=32, epochs=5, output=str(tmp_path / "out")))
    assert set(results["summary"]) == {"reference", "cnn"}
    assert {c["model"] for c in results["comparisons"]} == {"reference", "cnn"}
    assert any(p.name.startswith("cnn-EfficientNetB0-cal-") for p in (tmp_path / "out" / "cache").iterdir())


def test_check_no_leak_refuses_a_test_image_in_training():
    from phenotype.cv import check_no_leak
    from prompts.splits import Fold

    fold = Fold(0, 0, 0, ("co/a.png",), ("co/b.png",))
    with pytest.raises(UserError, match="1 test image"):
        check_no_leak(fold, "co-only", [], ["co/b.png"], set())
