"""`segment`: the U-Net learns blob scenes and real stained cells, the CV runs end to end with a synthetic
mix and resumes, leaks are refused by path and by sha256, bad inputs are one line and exit status 2.

Tiny settings throughout: 64 px, the `tiny` U-Net, 1-8 epochs, 2 CPU threads at most.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prompts.normalize import DEFAULT
from tests.conftest import shared_data

pytest.importorskip("keras")
pytest.importorskip("skimage")

SIZE = 64


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    from prompts.blobs import make_blob_pairs

    return make_blob_pairs(tmp_path_factory.mktemp("blobs") / "data", n=8, size=SIZE, seed=0)


def _arrays(folder):
    from prompts.pairs import read_pairs
    from segment.pixels import load_image_array, load_mask_array

    pairs = read_pairs(folder)
    x = np.stack([load_image_array(p.image, SIZE, DEFAULT) for p in pairs]).astype(np.float32)
    y = np.stack([load_mask_array(p.mask, SIZE) for p in pairs])
    return x, y


def _train_and_score(x, y, n_train, epochs):
    from segment.metrics import score_set
    from segment.model import Trainer, instances, targets

    trainer = Trainer("MobileNetV2", "tiny", SIZE, seed=0, learning_rate=3e-3)
    losses = trainer.train(x[:n_train], np.stack([targets(m) for m in y[:n_train]]), epochs, 4, seed=0)
    probs = trainer.predict(x[n_train:], 4)
    return losses, probs, score_set(zip(y[n_train:], [instances(p) for p in probs]))


def test_unet_learns_blob_scenes(blobs):
    """8 epochs on 6 blob scenes: the loss falls and held-out scenes are segmented (not all background)."""
    x, y = _arrays(blobs)
    losses, probs, scores = _train_and_score(x, y, 6, epochs=8)
    assert probs.shape == (2, SIZE, SIZE, 3)
    assert losses[-1] < losses[0]
    assert scores["iou"] > 0.3, scores  # measured 0.74 after 10 epochs; a network predicting background scores 0
    assert scores["tp"] > 0


def test_unet_trains_on_stained_cells(tmp_path):
    """Real pixels: pbc3 blood-cell images, thresholded masks (Otsu + connected components)."""
    from prompts.blobs import write_threshold_pairs

    src = shared_data("pbc3")
    images = sorted((src / "neutrophil").glob("*.jpg"))[:3] + sorted((src / "lymphocyte").glob("*.jpg"))[:3]
    data = write_threshold_pairs(images, tmp_path / "pbc3_pairs", size=SIZE)
    x, y = _arrays(data)
    assert y.max() >= 1  # the threshold found cells
    losses, probs, scores = _train_and_score(x, y, 4, epochs=2)
    assert np.isfinite(losses).all() and probs.shape == (2, SIZE, SIZE, 3)
    assert np.allclose(probs.sum(axis=-1), 1, atol=1e-4)
    assert 0.0 <= scores["iou"] <= 1.0 and scores["n_images"] == 2


# ---------------------------------------------------------------- the cross-validation


def _split(data: Path, out: Path, folds: int = 2) -> tuple[Path, object]:
    from prompts.pairs import read_pairs
    from prompts.splits import write_split
    from segment.folds import make_split, pairs_dataset

    split = make_split(pairs_dataset(data, read_pairs(data)), folds, 1, None, 0)
    write_split(out, split)
    return out, split


def _synthetic(root: Path, data: Path, split, seed: int = 10, record=None) -> Path:
    """SYN/fold_<k>/aug/{images,masks} (blob pairs standing in for `controlnet generate` output) with each fold's
    fingerprint.json naming the fold's training pairs, as a per-fold ControlNet's record would."""
    from prompts.blobs import make_blob_pairs
    from prompts.files import sha256_file

    for fold in split.folds:
        make_blob_pairs(root / f"fold_{fold.index}" / "aug", n=4, size=SIZE, seed=seed + fold.index)
        images = {p: sha256_file(data / p) for p in fold.train}
        masks = {p.replace("images/", "masks/"): sha256_file(data / p.replace("images/", "masks/")) for p in fold.train}
        rec = record(fold, images, masks) if record else {"version": 1, "parts": {}, "images": images, "masks": masks}
        (root / f"fold_{fold.index}" / "fingerprint.json").write_text(json.dumps(rec))
    (root / "manifest.jsonl").write_text("".join(json.dumps({"file": f"fold_{f.index}/aug/images/blob_000.png",
                                                             "model": "tiny"}) + "\n" for f in split.folds))
    return root


def _cv(argv, capsys=None):
    from segment.__main__ import main

    return main(["cv", "--no-progress", *argv])


def test_cv_end_to_end_with_a_synthetic_mix_and_resume(blobs, tmp_path):
    split_path, split = _split(blobs, tmp_path / "split.json")
    syn = _synthetic(tmp_path / "syn", blobs, split)
    out = tmp_path / "out"
    argv = ["--data", str(blobs), "--split", str(split_path), "--synthetic", str(syn), "--output", str(out),
            "--mixes", "real,real+50,synthetic", "--weights", "tiny", "--image-size", str(SIZE), "--epochs", "1",
            "--batch-size", "4", "--overlays", "2"]
    assert _cv(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["tree"], r["mix"]) for r in results["runs"]} == {("real", "real"), ("aug", "real+50"), ("aug", "synthetic")}
    assert len(results["runs"]) == 2 * 3
    rows = {r["mix"]: r for r in results["tables"]["aug"]}
    assert rows["synthetic"]["synthetic_fraction"] == 1.0 and rows["real"]["synthetic_fraction"] == 0.0
    assert 0 < rows["real+50"]["synthetic_fraction"] < 1
    for mix in ("real+50", "synthetic"):  # 1 epoch: the baseline may not have learned, and then no verdict is given
        if results["not_learned"]:
            assert "verdict" not in rows[mix]
        else:
            assert rows[mix]["verdict"]["word"] in ("helps", "hurts", "equivalent", "inconclusive")
            assert "p_holm" in rows[mix]["vs_real"]["ap50"]
    for r in results["runs"]:  # tested on the fold's real test pairs only
        assert r["n_test"] == len(split.folds[r["fold"]].test)
        assert r["n_train_real"] == (0 if r["mix"] == "synthetic" else len(split.folds[r["fold"]].train))
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6 and csv_lines[0].startswith("tree,mix,fold,repeat,ap50")
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "Smoke run" in md and "`tiny` smoke model" in md and "tiny random Stable Diffusion" in md
    assert "adding synthetic pairs" in md
    assert page.count("data:image/png;base64,") == 3 * 2  # 2 overlays for each of the 3 (tree, mix) runs of the first fold
    assert ("Verdicts" in md and "one Holm family" in md) or ("No verdict" in md and "did not learn" in md)
    assert "otsu-watershed" in md and "Per image" in md and "Per set" in md
    for r in results["runs"]:  # predicted masks kept, at each test image's own size
        assert len(r["predictions"]) == r["n_test"] and all((out / p).is_file() for p in r["predictions"])
    for run in results["runs"]:
        for p in run["overlays"]:
            assert (out / p).is_file()
    # a re-run reuses every run
    assert _cv(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["runs_trained"] == 0 and again["timing"]["runs_reused"] == 6


# ---------------------------------------------------------------- leaks and bad inputs (no Keras needed: fast)


def _expect_error(argv, capsys, *words):
    from segment.__main__ import main

    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert len(msg.splitlines()) == 1, msg
    for w in words:
        assert w in msg, msg
    return msg


def _leak_argv(blobs, tmp_path, syn):
    return ["cv", "--data", str(blobs), "--split", str(tmp_path / "split.json"), "--synthetic", str(syn), "--output",
            str(tmp_path / "out"), "--mixes", "real,real+50", "--weights", "tiny", "--image-size", str(SIZE)]


def test_cv_refuses_a_generator_trained_on_a_test_pair_by_path(blobs, tmp_path, capsys):
    _, split = _split(blobs, tmp_path / "split.json")
    test0 = split.folds[0].test[0]

    def record(fold, images, masks):
        if fold.index == 0:
            images = {**images, test0: "0" * 64}
        return {"version": 1, "parts": {}, "images": images, "masks": masks}

    syn = _synthetic(tmp_path / "syn", blobs, split, record=record)
    _expect_error(_leak_argv(blobs, tmp_path, syn), capsys, "fold_0", test0, "leak")
    assert not (tmp_path / "out").exists()


def test_cv_refuses_a_generator_trained_on_a_renamed_test_pair(blobs, tmp_path, capsys):
    from prompts.files import sha256_file

    _, split = _split(blobs, tmp_path / "split.json")
    test1 = split.folds[1].test[0]
    mask1 = test1.replace("images/", "masks/")

    def record(fold, images, masks):
        if fold.index == 1:  # the test mask, under another name: caught by its sha256
            masks = {**masks, "elsewhere/renamed.png": sha256_file(blobs / mask1)}
        return {"version": 1, "parts": {}, "images": images, "masks": masks}

    syn = _synthetic(tmp_path / "syn", blobs, split, record=record)
    _expect_error(_leak_argv(blobs, tmp_path, syn), capsys, "fold_1", "same content")
    assert not (tmp_path / "out").exists()


def test_cv_refuses_a_synthetic_pair_that_is_a_test_pair(blobs, tmp_path, capsys):
    _, split = _split(blobs, tmp_path / "split.json")
    syn = _synthetic(tmp_path / "syn", blobs, split)
    test0 = split.folds[0].test[0]
    shutil.copy(blobs / test0, syn / "fold_0" / "aug" / "images" / "blob_000.png")  # a test image copied in
    _expect_error(_leak_argv(blobs, tmp_path, syn), capsys, "test pairs", "fold_0")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, words", [
    (["--image-size", "50"], ["--image-size 50", "multiple of 32"]),
    (["--mixes", "real,half"], ["--mixes half", "unknown mix"]),
    (["--mixes", "real,real+50"], ["need synthetic pairs", "--synthetic"]),
    (["--backbone", "ResNet50"], ["--backbone ResNet50"]),
    (["--weights", "missing.weights.h5"], ["--weights missing.weights.h5", "no such file"]),
    (["--folds", "20"], ["fewer than --folds 20"]),
    (["--delta", "-1"], ["--delta"]),
    (["--realism", "nope.json"], ["--realism nope.json", "segment realism"]),
])
def test_cv_bad_inputs_are_one_line(blobs, tmp_path, capsys, extra, words):
    argv = ["cv", "--data", str(blobs), "--output", str(tmp_path / "out"), "--weights", "tiny", "--image-size", str(SIZE),
            "--mixes", "real", *extra]
    _expect_error(argv, capsys, *words)
    assert not (tmp_path / "out").exists()


def test_cv_output_inside_data_is_refused(blobs, capsys):
    _expect_error(["cv", "--data", str(blobs), "--output", str(blobs / "out"), "--mixes", "real"], capsys, "inside the data folder")
    assert not (blobs / "out").exists()


def test_realism_writes_kid_c2st_and_mask_consistency(blobs, tmp_path):
    from segment.__main__ import main

    _, split = _split(blobs, tmp_path / "split.json")
    syn = _synthetic(tmp_path / "syn", blobs, split)
    out = tmp_path / "realism"
    assert main(["realism", "--no-progress", "--data", str(blobs), "--synthetic", str(syn), "--output", str(out),
                 "--weights", "tiny", "--image-size", str(SIZE), "--epochs", "2", "--batch-size", "4"]) == 0
    rec = json.loads((out / "realism.json").read_text())
    assert rec["task"] == "segmentation"
    (row,) = rec["rows"]
    assert row["tree"] == "aug" and row["n_synthetic"] == 8 and row["n_real"] == 8
    assert 0.0 <= row["mask_iou"] <= 1.0 and 0.0 <= row["mask_ap50"] <= 1.0
    assert row["c2st_accuracy"] is not None and 0.0 <= row["c2st_accuracy"] <= 1.0
    assert "mask AP50" in (out / "realism.md").read_text()
    from analysis.tables import render_markdown
    from segment.report import load_realism, realism_blocks

    assert "| aug | 8 |" in render_markdown(realism_blocks(load_realism(out)))  # what `cv --realism OUT` adds to the report


def test_every_segment_key_is_a_flag(capsys):
    """Each key the subcommand reads is exactly one flag of it (no substring match), and no other key is."""
    import dataclasses

    from prompts.schema import SECTIONS
    from segment.__main__ import COMMANDS, main

    from .helpers import help_flags

    every = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(SECTIONS["segment"])}
    for command, (_, _, keys) in COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        flags = help_flags(capsys.readouterr().out)
        wanted = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(SECTIONS["segment"]) if keys is None or f.name in keys}
        assert wanted <= flags, f"segment {command}: no flag for {sorted(wanted - flags)}"
        data_flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(SECTIONS["data"])}
        assert (flags & every) - wanted <= data_flags, f"segment {command}: flags of keys it does not read: {sorted((flags & every) - wanted)}"


def test_cv_on_pairs_from_per_fold_controlnets(blobs, tiny_model, tmp_path, caplog):
    """The real chain on the tiny model: a ControlNet per fold, its pairs (trees aug and density12.0), the CV
    checks each tree's record against the fold's test pairs and trains on them."""
    import logging

    from controlnet.__main__ import main as controlnet

    split_path, split = _split(blobs, tmp_path / "split.json")
    common = ["--data", str(blobs), "--split", str(split_path), "--model", str(tiny_model), "--output", str(tmp_path / "cn")]
    controlnet(["train", *common, "--resolution", str(SIZE), "--batch-size", "2", "--epochs", "1"])
    controlnet(["generate", *common, "--synthetic", str(tmp_path / "syn"), "--size", str(SIZE), "--count", "2",
                "--densities", "12", "--steps", "2", "--no-progress"])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert _cv(["--data", str(blobs), "--split", str(split_path), "--synthetic", str(tmp_path / "syn"), "--output", str(out),
                    "--mixes", "real,synthetic", "--weights", "tiny", "--image-size", str(SIZE), "--epochs", "1",
                    "--batch-size", "4", "--overlays", "1"]) == 0
    assert not [r for r in caplog.records if "no record" in r.getMessage()]  # every tree's provenance was checked
    results = json.loads((out / "results.json").read_text())
    assert {(r["tree"], r["mix"]) for r in results["runs"]} == {("real", "real"), ("aug", "synthetic"), ("density12.0", "synthetic")}
    assert not any(r["leaky"] for r in results["runs"])
    assert "tiny random Stable Diffusion" in (out / "report.md").read_text()
