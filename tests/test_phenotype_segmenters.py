"""`phenotype.segmentation: unet | stardist`: the cells of each fold's test co-culture images come from the
segmentation task's model trained on that fold's training pairs only.

The rooms meet through files (`prompts.segmented`): `phenotype pairs` writes a fold's lists, `segment predict`
trains on the first and writes label images of the second, `phenotype cv --segmented ROOT` cuts the test cells
from them and reports detection F1 at IoU 0.5 with the count error split into missed cells and wrong types.
Data: the task registry's phenotyping example (2 numpy-drawn types, 1 monoculture image each, 4 co-culture
images of 96 px with exact masks, 2 folds); the U-Net at its tiny size for 1 epoch. The study runs once, through the
workflow (the module's fixture `segmented`); the tests read its segmented folds and run the commands on them again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from prompts.errors import UserError

from .studies import study_run

pytest.importorskip("keras")
tifffile = pytest.importorskip("tifffile")

SEG = dict(weights="tiny", image_size=64, epochs=1, batch_size=2)


def _study(folder: Path, **phenotype):
    from prompts.config import load_study

    raw = yaml.safe_load((folder / "study.yaml").read_text())
    raw["phenotype"].update(phenotype)
    raw["segment"] = dict(SEG)
    (folder / "study.yaml").write_text(yaml.safe_dump(raw))
    return load_study(folder / "study.yaml")


def _segment_fold(study, fold: int, root: Path, model: str = "unet") -> Path:
    """`phenotype pairs` + `segment predict` of one fold, in-process: ROOT/fold_<k>/{pairs,masks}."""
    import dataclasses

    from phenotype.segpairs import write_fold_pairs
    from segment.predict import run_predict

    lists, masks = root / f"fold_{fold}" / "pairs", root / f"fold_{fold}" / "masks"
    write_fold_pairs(study.data, study.phenotype, fold, lists)
    run_predict(study.data, dataclasses.replace(study.segment, model=model), lists / "train.csv", lists / "test.csv", masks)
    return masks


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """The example study with segmentation unet (regimes zero-shot and co-only) run through the workflow: each fold's
    `pheno_segment` job (`phenotype pairs`, then `segment predict` with the tiny U-Net) wrote OUT/segmented/fold_<k>;
    the tests read those folders and call the commands again on them in-process."""
    pytest.importorskip("snakemake")
    from study import tasks

    folder = tmp_path_factory.mktemp("pheno-seg")
    tasks.get("phenotyping").example(folder)
    study = _study(folder, segmentation="unet", regimes=["zero-shot", "co-only"])
    res = study_run(folder, "--cores", "2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return folder, study, folder / "out" / "segmented"


def _folds(study):
    from phenotype.cv import fold_list
    from phenotype.data import read_data

    return fold_list(study.data, study.phenotype, read_data(study.data.data))


def test_pairs_are_the_folds_training_images_with_masks_and_never_a_test_image(segmented):
    from prompts.segmented import read_test_images, read_train_pairs

    folder, study, root = segmented
    for fold in _folds(study):
        train = read_train_pairs(root / f"fold_{fold.index}" / "pairs" / "train.csv")
        test = read_test_images(root / f"fold_{fold.index}" / "pairs" / "test.csv")
        names = {p.relative_to((folder / "data").resolve()).as_posix() for p, _ in train}
        assert [n for n, _ in test] == list(fold.test)
        assert {n for n in names if n.startswith("co/")} == set(fold.train)
        assert sum(n.startswith("mono/") for n in names) == 2  # one monoculture image per type, with masks
        assert not set(fold.test) & names


def test_predict_writes_uint16_label_images_of_the_test_images_and_a_record_of_what_trained(segmented):
    from prompts.fingerprint import file_sha256, written_by

    folder, study, root = segmented
    for fold in _folds(study):
        masks = root / f"fold_{fold.index}" / "masks"
        rec = json.loads((masks / "segmenter.json").read_text())
        assert written_by(masks / "segmenter.json") == "cellsynth segment predict"
        assert rec["settings"]["model"] == "unet" and rec["settings"]["epochs"] == 1 and len(rec["losses"]) == 1
        trained = {t[k] for t in rec["train"] for k in ("image_sha256", "mask_sha256")}
        for name in fold.test:
            labels = tifffile.imread(masks / Path(name).with_suffix(".tif"))
            assert labels.dtype == np.uint16 and labels.shape == (96, 96)
            assert file_sha256(folder / "data" / name) not in trained  # no test image trains its segmenter
        assert [t["name"] for t in rec["test"]] == list(fold.test)


def test_predict_refuses_the_data_folder_a_users_file_and_a_test_image_among_the_training_pairs(segmented, tmp_path, capsys):
    from segment.__main__ import main

    folder, study, root = segmented
    lists = root / "fold_0" / "pairs"
    args = ["predict", "--config", str(folder / "study.yaml"), "--no-progress", "--train", str(lists / "train.csv"),
            "--images", str(lists / "test.csv")]
    # outputs never go inside the data folder
    def refused(argv) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        return capsys.readouterr().err

    assert "--out" in refused([*args, "--out", str(folder / "data" / "predicted")])
    assert not (folder / "data" / "predicted").exists()
    # a file the toolkit did not write, where a mask would go, is left untouched
    out = tmp_path / "masks"
    user = out / "co" / "images" / Path(_folds(study)[0].test[0]).with_suffix(".tif").name
    user.parent.mkdir(parents=True)
    user.write_bytes(b"mine")
    assert "did not write" in refused([*args, "--out", str(out)])
    assert user.read_bytes() == b"mine" and not (out / "segmenter.json").exists()
    # a training pair whose image has a test image's bytes (a duplicate under another name) is refused
    test_image = Path(lists.joinpath("test.csv").read_text().splitlines()[1].split(",")[1])
    dup = tmp_path / "dup.png"
    shutil.copy(test_image, dup)
    bad = tmp_path / "train.csv"
    bad.write_text(lists.joinpath("train.csv").read_text() + f"{dup},{dup}\n")
    err = refused([*args[:4], "--train", str(bad), "--images", str(lists / "test.csv"), "--out", str(tmp_path / "m2")])
    assert "never trains on an image it predicts" in err and not (tmp_path / "m2").exists()


def test_cv_cuts_test_cells_from_the_predicted_masks_and_splits_count_errors(segmented, tmp_path):
    """Detection F1 equals StarDist's matching of the true masks against the predicted files; missed = fn."""
    import dataclasses

    from analysis.matching import Match, matching
    from phenotype.cv import run_cv
    from phenotype.report import write_reports
    from prompts.pairs import load_mask

    folder, study, root = segmented
    ph = dataclasses.replace(study.phenotype, segmented=str(root), output=str(tmp_path / "out"), regimes=["zero-shot"])
    results = run_cv(study.data, ph)
    assert results["segmentation"] == "unet"
    for run in results["runs"]:
        fold = next(f for f in _folds(study) if f.index == run["fold"])
        direct = sum((matching(load_mask(folder / "data" / "co" / "masks" / Path(n).name),
                               load_mask(root / f"fold_{fold.index}" / "masks" / Path(n).with_suffix(".tif")))
                      for n in fold.test), Match())
        m = run["metrics"]
        assert m["detection_f1"] == pytest.approx(direct.f1) and (m["tp"], m["fp"], m["fn"]) == (direct.tp, direct.fp, direct.fn)
        assert m["missed"] == direct.fn and 0 <= m["wrong_type"] <= direct.tp
    assert results["segmenter"]["model"] == "unet" and set(results["segmenter"]["folds"]) == {"0", "1"}
    write_reports(results, ph.output)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Missed cells or wrong types" in report and "segment.weights: tiny" in report  # a smoke segmenter says so


def test_cv_refuses_masks_of_the_wrong_fold_a_missing_root_and_another_model(segmented, tmp_path):
    import dataclasses

    from phenotype.cv import run_cv

    folder, study, root = segmented
    ph = dataclasses.replace(study.phenotype, output=str(tmp_path / "out"), regimes=["zero-shot"])
    with pytest.raises(UserError, match="needs phenotype.segmented"):
        run_cv(study.data, ph)
    swapped = tmp_path / "swapped"  # fold 1's segmenter trained on fold 0's test images
    shutil.copytree(root / "fold_1", swapped / "fold_0")
    shutil.copytree(root / "fold_0", swapped / "fold_1")
    with pytest.raises(UserError, match="trained on .* a test image of that fold"):
        run_cv(study.data, dataclasses.replace(ph, segmented=str(swapped)))
    with pytest.raises(UserError, match="predicted by unet, not by phenotype.segmentation stardist"):
        run_cv(study.data, dataclasses.replace(ph, segmented=str(root), segmentation="stardist"))
    assert not (tmp_path / "out").exists()


def test_stardist_predict_writes_label_images(segmented, tmp_path):
    """StarDist 2D from scratch (tiny net, 1 epoch) through the same command: label images at each image's size."""
    pytest.importorskip("stardist.models")
    folder, study, _ = segmented
    masks = _segment_fold(study, 0, tmp_path / "sd", model="stardist")
    rec = json.loads((masks / "segmenter.json").read_text())
    assert rec["settings"]["model"] == "stardist" and "StarDist 2D" in rec["training"]["note"]
    for t in rec["test"]:
        assert tifffile.imread(masks / t["mask"]).shape == (96, 96)


def test_the_plan_segments_each_fold_before_every_phenotype_cv_job(segmented, tmp_path):
    from study.phenotyping import resolve

    folder, study, _ = segmented
    plan = resolve(study, folder / "study.yaml")
    assert plan.segmenter == "unet" and len(plan.segmented_dirs()) == 2
    assert all("--segmented" in plan.regime_flags(r) for r in plan.regimes) and "--segmented" in plan.segmented_flags
    assert set(plan.segmented_dirs()) <= set(plan.sealed_folders()) and not plan.crops_dirs()
    assert "segment.epochs=1" in plan.settings["segment"].values()
    plain = resolve(_study(folder, segmentation="given"), folder / "study.yaml")
    assert not plain.segmenter and not plain.segmented_dirs() and "--segmented" not in plain.regime_flags(plain.regimes[0])
    _study(folder, segmentation="unet")  # the fixture's study file again


def test_prompts_check_refuses_an_unknown_segmentation_in_one_line(segmented, tmp_path):
    from prompts.check import check_file

    folder, _, _ = segmented
    raw = yaml.safe_load((folder / "study.yaml").read_text())
    raw["phenotype"]["segmentation"] = "cellpose"
    raw["data"]["data"] = str(folder / "data")
    bad = tmp_path / "study.yaml"
    bad.write_text(yaml.safe_dump(raw))
    errors = check_file(str(bad))  # `prompts check` prints these; the workflow runs the same check before any job
    assert any("phenotype.segmentation: must be one of given, classical, unet, stardist, got 'cellpose'" in e for e in errors), errors


def test_the_study_with_segmentation_unet_runs_end_to_end(segmented):
    """pheno_segment per fold -> every regime -> the report, with detection F1 from the fold's own masks; re-run: nothing."""
    folder, _, root = segmented
    for fold in (0, 1):
        assert (root / f".fold_{fold}.sha256").is_file()
        assert (root / f"fold_{fold}" / "masks" / "segmenter.json").is_file()
    results = json.loads((folder / "out" / "report" / "results.json").read_text())
    assert results["segmentation"] == "unet" and all("detection_f1" in r["metrics"] for r in results["runs"])
    assert results["regimes"] == ["zero-shot", "co-only"]
    res = study_run(folder, "-n")
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:]


def test_one_leak_rule_finds_a_test_image_among_training_pairs_by_path_or_bytes(tmp_path):
    """`prompts.segmented.find_test_image_in_training`, which `phenotype pairs` and `segment predict` both apply."""
    from prompts.segmented import find_test_image_in_training, test_image_hashes

    files = {}
    for name, content in (("a.png", b"A"), ("b.png", b"B"), ("m.tif", b"M"), ("copy.png", b"B")):
        files[name] = tmp_path / name
        files[name].write_bytes(content)
    test = [("co/b.png", files["b.png"])]
    assert find_test_image_in_training([(files["a.png"], files["m.tif"])], test) is None
    assert find_test_image_in_training([(files["a.png"], files["m.tif"]), (files["copy.png"], files["m.tif"])], test) == (
        files["copy.png"], "co/b.png")  # other name, same bytes
    via_link = tmp_path / "sub" / ".." / "b.png"
    (tmp_path / "sub").mkdir()
    assert find_test_image_in_training([(via_link, files["m.tif"])], test, test_image_hashes(test)) == (via_link, "co/b.png")
