"""The +synthetic regime of the phenotyping task: the fold's training crops (`phenotype crops`), generated crops
added to the scarce regime at the study's fractions, the leak check traced to source images, the one line for
a bad regime, and (workflow tier) the whole study with crops -> one LoRA per type -> generated crops -> report.

Data: the task registry's smoke example (study/tasks.py): numpy-drawn cells of two types, one monoculture image
per type and four co-culture images with exact masks and types.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from prompts.errors import UserError

from .studies import study_run

# unit tier by default (tests/conftest.py); the slow test below marks itself workflow


def _section(tmp: Path, **kw):
    from prompts.schema.phenotype import PhenotypeSection

    base = dict(models=["reference"], trees=20, folds=2, k=[1], crop_size=32, overlays=0, output=str(tmp / "cv"))
    base.update(kw)
    return PhenotypeSection(**base)


def _data_section(root: Path):
    from prompts.schema.data import DataSection

    return DataSection(data=str(root))


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The registry's phenotyping example (data/ and study.yaml), written once."""
    from study import tasks

    folder = tmp_path_factory.mktemp("pheno-syn")
    tasks.get("phenotyping").example(folder)
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the crop writer


def test_crops_are_the_folds_training_cells_with_deterministic_names_and_a_traceable_record(example, tmp_path):
    from phenotype.crops import RECORD
    from phenotype.cv import fold_list
    from phenotype.data import read_data
    from phenotype.foldcrops import crops_of_fold
    from prompts import fingerprint

    data, ph = _data_section(example / "data"), _section(tmp_path)
    before = _tree(example / "data")
    out = tmp_path / "crops" / "fold_0"
    record = crops_of_fold(data, ph, 0, out)
    fold = fold_list(data, ph, read_data(example / "data"))[0]
    assert record["fold"] == 0 and record["crop_size"] == 32 and record["crops"]
    sources = {r["source"] for r in record["crops"].values()}
    assert not sources & set(fold.test)  # no test image's cell is a training crop
    assert set(fold.train) <= sources and any(s.startswith("mono/") for s in sources)
    for crop, rec in record["crops"].items():
        t, name = crop.split("/")
        assert t in ("small_bright", "large_dim") and name.endswith(".png") and "__c" in name
        assert fingerprint.file_sha256(out / crop) == rec["sha256"]
        assert fingerprint.file_sha256(example / "data" / rec["source"]) == rec["source_sha256"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [w for w in written if ".tmp" in w]  # atomic: no temporary file left
    pngs = sorted(w for w in written if w.endswith(".png"))
    assert pngs == sorted(record["crops"]) and RECORD in written
    assert _tree(example / "data") == before  # nothing written into the data folder
    assert not [p for p in tmp_path.iterdir() if p.name not in ("crops",)]  # nothing outside OUT
    # the same fold again: the same names and bytes (deterministic)
    first = _tree(out)
    assert crops_of_fold(data, ph, 0, out)["crops"] == record["crops"] and _tree(out) == first


def test_crops_refuse_the_data_folder_a_users_file_and_a_fold_that_does_not_exist(example, tmp_path):
    from phenotype.foldcrops import crops_of_fold

    data, ph = _data_section(example / "data"), _section(tmp_path)
    with pytest.raises(UserError, match="data"):
        crops_of_fold(data, ph, 0, example / "data" / "crops")
    assert not (example / "data" / "crops").exists()
    with pytest.raises(UserError, match="--fold 5"):
        crops_of_fold(data, ph, 5, tmp_path / "c5")
    # a user's file where a crop would go: refused, kept, nothing written
    out = tmp_path / "mine"
    record = crops_of_fold(data, ph, 0, tmp_path / "probe")
    crop = sorted(record["crops"])[0]
    (out / crop).parent.mkdir(parents=True)
    (out / crop).write_bytes(b"the user's picture")
    with pytest.raises(UserError, match="did not write"):
        crops_of_fold(data, ph, 0, out)
    assert (out / crop).read_bytes() == b"the user's picture"
    assert sorted(p.name for p in out.rglob("*")) == sorted([Path(crop).parent.name, Path(crop).name])


def test_an_earlier_crop_that_is_no_longer_a_training_cell_is_removed_only_when_ours(example, tmp_path):
    from phenotype.foldcrops import crops_of_fold

    data = _data_section(example / "data")
    out = tmp_path / "crops"
    fold0 = crops_of_fold(data, _section(tmp_path), 0, out)["crops"]
    fold1 = crops_of_fold(data, _section(tmp_path), 1, out)["crops"]  # another fold's cells into the same folder
    gone = set(fold0) - set(fold1)
    assert gone and not [c for c in gone if (out / c).exists()]
    assert all((out / c).is_file() for c in fold1)


# --------------------------------------------------------------------------- regimes and the mix


def test_synthetic_expands_to_each_scarce_regime_per_fraction_and_parses_as_one_mix():
    from prompts.mixes import REGIME_PLUS, parse_mixes, phenotyping_regimes

    assert phenotyping_regimes(["zero-shot", "retrained", "synthetic"], [2, 1], [0.5, 1]) == [
        "zero-shot", "retrained-k1", "retrained-k2", "retrained-k1+50", "retrained-k1+100", "retrained-k2+50", "retrained-k2+100"]
    assert phenotyping_regimes(["zero-shot", "co-only", "synthetic"], [1], [0.25]) == ["zero-shot", "co-only", "zero-shot+25"]
    assert phenotyping_regimes(["retrained-k1+50"], [5], [0.5]) == ["retrained-k1+50"]  # one expanded name: what a job runs
    mix = parse_mixes(["retrained-k2+50"], ("zero-shot", "retrained", "co-only", REGIME_PLUS))[0]
    assert (mix.kind, mix.base, mix.k, mix.percent, mix.uses_synthetic) == (REGIME_PLUS, "retrained-k2", 2, 50.0, True)
    with pytest.raises(UserError, match="phenotype.synthetic_fractions is empty"):
        phenotyping_regimes(["synthetic"], [1], [])


def _write_tree(tree: Path, crops: Path, record: dict, n_per_type: int) -> None:
    """A tree as `generate` lays it out (w1.0/<type>/*.png + fingerprint.json with `images`): the first crops of
    each type copied, the record naming every crop the LoRAs 'saw' (as `lora train` records them)."""
    from prompts import fingerprint

    for t in ("small_bright", "large_dim"):
        names = sorted(c for c in record["crops"] if c.startswith(t + "/"))[:n_per_type]
        (tree / t).mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(names):
            shutil.copyfile(crops / c, tree / t / f"{t}_{i:05d}.png")
    images = {c: r["sha256"] for c, r in record["crops"].items()}
    fingerprint.write(tree / "fingerprint.json", {**fingerprint.make(weight=1.0), "fold": None, "weight": 1.0, "images": images})


@pytest.fixture()
def synthetic_study(example, tmp_path):
    """Crops of both folds (`phenotype crops`) and one tree per fold whose LoRAs 'saw' those crops."""
    from phenotype.foldcrops import crops_of_fold

    data = _data_section(example / "data")
    records = {}
    for k in (0, 1):
        crops = tmp_path / "crops" / f"fold_{k}"
        records[k] = crops_of_fold(data, _section(tmp_path), k, crops)
        _write_tree(tmp_path / "syn" / f"fold_{k}" / "w1.0", crops, records[k], 6)
    return data, records


def test_generated_crops_join_the_scarce_regime_at_its_fraction_per_type(example, tmp_path, synthetic_study, caplog):
    from phenotype.cv import run_cv

    data, _ = synthetic_study
    ph = _section(tmp_path, regimes=["zero-shot", "synthetic"], synthetic_fractions=[0.5], synthetic=str(tmp_path / "syn"),
                  crops=str(tmp_path / "crops"))
    res = run_cv(data, ph)
    assert res["regimes"] == ["zero-shot", "zero-shot+50"] and "cannot check" not in caplog.text
    runs = {(r["regime"], r["fold"]): r for r in res["runs"]}
    for k in (0, 1):
        base, plus = runs[("zero-shot", k)], runs[("zero-shot+50", k)]
        # 6 monoculture cells per type: 50 % is 3 generated crops per type
        assert base["n_synthetic_cells"] == 0 and plus["n_synthetic_cells"] == 6
        assert plus["n_train_cells"] == base["n_train_cells"] + 6 and plus["shortfall"] == {}
        assert plus["synthetic_tree"].endswith(f"fold_{k}/w1.0") and not plus["leaky"]
    assert [c["regime"] for c in res["comparisons"]] == ["zero-shot+50"]
    # more than the tree holds: the shortfall is recorded per type
    ph2 = _section(tmp_path, regimes=["zero-shot", "synthetic"], synthetic_fractions=[2.0], synthetic=str(tmp_path / "syn"),
                   crops=str(tmp_path / "crops"), output=str(tmp_path / "cv2"))
    short = [r for r in run_cv(data, ph2)["runs"] if r["regime"] == "zero-shot+200"]
    assert all(r["n_synthetic_cells"] == 12 and r["shortfall"] == {"large_dim": 6, "small_bright": 6} for r in short)


def test_a_tree_whose_loras_saw_a_test_images_cell_is_refused_before_anything_is_written(example, tmp_path, synthetic_study):
    from phenotype.crops import COMMAND, RECORD
    from phenotype.cv import fold_list, run_cv
    from phenotype.data import read_data
    from prompts import fingerprint

    data, records = synthetic_study
    test_image = fold_list(data, _section(tmp_path), read_data(example / "data"))[0].test[0]
    ph = _section(tmp_path, regimes=["zero-shot", "synthetic"], synthetic=str(tmp_path / "syn"), crops=str(tmp_path / "crops"))
    # the crop record says one crop came from a test image of fold 0 (by content: a renamed copy is caught too)
    rec = json.loads(json.dumps(records[0]))
    crop = sorted(rec["crops"])[0]
    rec["crops"][crop].update(source="co/images/renamed.png",
                              source_sha256=fingerprint.file_sha256(example / "data" / test_image))
    fingerprint.write_json(tmp_path / "crops" / "fold_0" / RECORD, {k: v for k, v in rec.items() if k != "written_by"}, COMMAND)
    with pytest.raises(UserError, match=f"fold_0's test image {test_image} \\(as co/images/renamed.png, same content\\)"):
        run_cv(data, ph)
    assert not (tmp_path / "cv").exists()
    # a crop the LoRAs saw that the record does not know: cannot be traced, refused
    fingerprint.write_json(tmp_path / "crops" / "fold_0" / RECORD, {k: v for k, v in records[0].items() if k != "written_by"}, COMMAND)
    tree = tmp_path / "syn" / "fold_0" / "w1.0"
    fp = json.loads((tree / "fingerprint.json").read_text())
    fp["images"]["small_bright/elsewhere.png"] = "0" * 64
    (tree / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(UserError, match="small_bright/elsewhere.png, which is not a crop of"):
        run_cv(data, ph)


def test_a_tree_that_cannot_be_traced_is_used_with_one_warning(example, tmp_path, synthetic_study, caplog):
    from phenotype.cv import run_cv

    data, _ = synthetic_study
    ph = _section(tmp_path, regimes=["zero-shot", "synthetic"], synthetic=str(tmp_path / "syn"))  # no phenotype.crops
    res = run_cv(data, ph)
    assert "2 synthetic tree(s) cannot be traced to their fold's training images" in caplog.text
    assert [r["n_synthetic_cells"] for r in res["runs"] if r["regime"] == "zero-shot+50"] == [6, 6]


def test_synthetic_regimes_without_a_synthetic_folder_are_one_line(example, tmp_path):
    from phenotype.cv import run_cv

    with pytest.raises(UserError, match="zero-shot\\+50 need synthetic cells"):
        run_cv(_data_section(example / "data"), _section(tmp_path, regimes=["zero-shot", "synthetic"]))


# --------------------------------------------------------------------------- one line for a bad regime


def test_a_bad_regime_is_the_same_line_from_prompts_check_and_the_workflow(example, tmp_path):
    from prompts.check import check_mapping
    from study.phenotyping import resolve

    raw = yaml.safe_load((example / "study.yaml").read_text())
    raw["data"]["data"] = str(example / "data")
    raw["study"]["output"] = str(tmp_path / "out")
    raw["phenotype"]["regimes"] = ["zero-shot", "nonsense"]
    study_file = tmp_path / "study.yaml"
    study, errors = check_mapping(raw, study_file)
    assert len(errors) == 1 and errors[0].startswith(f"{study_file}: phenotype.regimes nonsense: unknown"), errors
    with pytest.raises(UserError) as err:
        resolve(study, study_file)
    assert str(err.value) == errors[0]


# --------------------------------------------------------------------------- the whole study (workflow tier)


@pytest.mark.workflow
def test_the_study_with_synthetic_runs_crops_loras_generation_and_reports_the_regime(example, tmp_path):
    pytest.importorskip("snakemake")
    pytest.importorskip("torch")
    shutil.copytree(example / "data", tmp_path / "data")
    study = {"study": {"output": "out", "task": "phenotyping"}, "data": {"data": "data"},
             "lora": {"model": "tiny", "repeats": 1, "epochs": 1, "batch_size": 4, "resolution": 32, "rank": 4, "alpha": 4.0,
                      "validation_images": 0},
             "generate": {"steps": 2, "batch_size": 8, "lora_weights": [1.0], "seed": 0},
             "phenotype": {"crop_size": 32, "regimes": ["zero-shot", "synthetic"], "models": ["reference"], "folds": 2,
                           "trees": 20, "overlays": 0, "synthetic_fractions": [0.5]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    res = study_run(tmp_path, "--cores", "2", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "out"
    for k in (0, 1):
        assert sorted(p.name for p in (out / "lora" / f"fold_{k}").iterdir() if not p.name.startswith(".")
                      and p.is_dir()) == ["large_dim", "small_bright"]  # one LoRA per type per fold
        assert sorted(p.name for p in (out / "synthetic" / f"fold_{k}" / "w1.0").iterdir() if p.is_dir()) == ["large_dim", "small_bright"]
    report = json.loads((out / "report" / "results.json").read_text())
    assert report["regimes"] == ["zero-shot", "zero-shot+50"]
    plus = [r for r in report["runs"] if r["regime"] == "zero-shot+50"]
    assert len(plus) == 2 and all(r["n_synthetic_cells"] == 6 and not r["leaky"] for r in plus)
    text = (out / "report" / "report.md").read_text()
    assert "zero-shot+50" in text and "not run yet" not in text and "traced to training images only" in text
    assert "cannot check" not in (out / "logs").joinpath("pheno_cv.log").read_text()
    # a finished study has nothing to do (the +P job never wrote into the baseline's sealed cache)
    res = study_run(tmp_path, "-n")
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
