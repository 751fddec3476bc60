"""The segmentation study through Snakemake (`study.task: segmentation`): end to end on the tiny model.

Pairs: blob scenes and, when ../shared/data is present, real pbc3 blood-cell images with thresholded
masks (Otsu + connected components). One small study (2 folds, 64 px, 2 sampling steps, 2 U-Net
epochs, trees `aug` and `density3.0`; tests/studies.py) runs once per session through the GPU slots (the `seg_study`
fixture, which the task promises of tests/test_promise_tasks.py read too); the checks then
read its outputs: the report with verdicts, the fold ControlNets' training files against the folds'
test pairs (by path and sha256), and which rules a changed setting re-runs (dry runs).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .studies import copy_study, job_counts, snakemake
from .studies import write_seg_study as write_study

pytest.importorskip("snakemake")
pytest.importorskip("torch")

TREES = ("aug", "density3.0")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_workflow_runs_the_segmentation_study_to_a_report_with_verdicts(seg_study):
    out = seg_study / "out"
    assert (out / "report" / "report.html").is_file() and (out / "realism" / "realism.json").is_file()
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["task"] == "segmentation" and results["n_folds"] == 2
    assert sorted(results["tables"]) == sorted(TREES)
    verdicts = [row["verdict"]["word"] for rows in results["tables"].values() for row in rows
                if row["uses_synthetic"] and row.get("verdict")]
    report = (out / "report" / "report.md").read_text()
    if results["not_learned"]:  # the tiny U-Net after 2 epochs may not beat the classical floor: then no verdict at all
        assert not verdicts and "No verdict" in report and "did not learn" in results["not_learned"]
    else:
        assert len(verdicts) == len(TREES) and set(verdicts) <= {"helps", "hurts", "equivalent", "inconclusive"}
    assert results["floor"] is not None and "otsu-watershed" in report  # the classical floor beside the model
    assert all((out / "report" / p).is_file() for r in results["runs"] for p in r["predictions"])
    assert "Realism of the synthetic pairs" in report and "outlines" in report
    assert any((out / "report" / "overlays").rglob("*.png"))
    # Each fold has its trees, each with its pairs and masks; the manifest lists every pair once.
    manifest = [json.loads(line) for line in (out / "synthetic" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 2 * len(TREES) * 2 and len({r["file"] for r in manifest}) == len(manifest)
    for rec in manifest:
        assert (out / "synthetic" / rec["file"]).is_file() and (out / "synthetic" / rec["mask"]).is_file()
    # GPU jobs went through the slots (fake devices here): each was pinned to one of them.
    for log in (out / "logs" / "controlnet").glob("*.log"):
        assert re.search(r"gpu slots: CUDA_VISIBLE_DEVICES=[01]\b", log.read_text()), log


def test_no_test_pair_reached_a_folds_controlnet_or_its_synthetic_pairs(seg_study):
    """Each fold's ControlNet saw exactly its training pairs, and no test file, by path or by sha256."""
    out, data = seg_study / "out", seg_study / "data"
    split = json.loads((out / "folds.json").read_text())  # StudyLayout.split_file, as classification
    assert len(split["folds"]) == 2
    for fold in split["folds"]:
        k = fold["fold"]
        test_files = [Path(p) for name in fold["test"] for p in (data / name, data / "masks" / Path(name).name)]
        assert all(p.is_file() for p in test_files)
        test_paths = {p.relative_to(data).as_posix() for p in test_files}
        test_hashes = {_sha256(p) for p in test_files}
        record = json.loads((out / "controlnet" / f"fold_{k}" / "controlnet" / "fingerprint.json").read_text())
        assert sorted(record["images"]) == sorted(fold["train"])
        for tree in TREES:
            tree_record = json.loads((out / "synthetic" / f"fold_{k}" / tree / "fingerprint.json").read_text())
            for seen in (record, tree_record):
                files = {**seen["images"], **seen["masks"]}
                assert files and not set(files) & test_paths
                assert not set(files.values()) & test_hashes
                for rel, sha in files.items():  # the recorded hashes are the data files' own
                    assert _sha256(data / rel) == sha


def test_a_changed_setting_reruns_only_the_rules_that_read_it(seg_study):
    assert job_counts(snakemake(seg_study, "-n").stdout) == {}
    try:
        write_study(seg_study, epochs=3)  # segment.epochs: the U-Nets only
        published = {"publish_realism": 1, "publish_report": 1, "all": 1}  # realism and the report are staged, then published
        res = snakemake(seg_study, "-n")
        assert job_counts(res.stdout) == {"seg_realism": 1, "seg_cv": 1, **published}
        assert "segment.epochs" in res.stdout  # the dry run's reason names the changed key (readable params)
        write_study(seg_study, steps=3)  # controlnet.steps: the pairs and everything after, not the ControlNets
        counts = job_counts(snakemake(seg_study, "-n").stdout)
        assert counts == {"pairs": 2, "pairs_manifest": 1, "seg_realism": 1, "seg_cv": 1, **published}, counts
    finally:
        write_study(seg_study)


def test_a_segmentation_study_without_pairs_is_one_line(tmp_path, class_data):
    (tmp_path / "study.yaml").write_text(f"study: {{output: out, task: segmentation}}\ndata: {{data: {class_data}}}\n"
                                         "controlnet: {model: tiny}\n")
    res = snakemake(tmp_path, "--cores", "1", "-n")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "image–mask pairs" in errors[0] and str(class_data) in errors[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_slurm_profile_sizes_every_segmentation_rule():
    """Each rule of segmentation.smk has its SLURM size; exactly the rules asking for a GPU get one."""
    import yaml

    text = "".join((ROOT / "workflow" / "rules" / name).read_text() for name in ("segmentation.smk", "common.smk"))
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    blocks = re.split(r"^\s*rule (\w+):", text, flags=re.M)[1:]
    rules = dict(zip(blocks[::2], blocks[1::2]))
    assert {"pairs_split", "controlnet", "pairs", "pairs_manifest", "seg_realism", "seg_cv", "tiny_model",
            "publish_realism", "publish_report"} == set(rules)
    for name, body in rules.items():
        assert profile[name]["mem_mb"] > 0 and profile[name]["runtime"] > 0, name
        assert profile[name].get("gpu", 0) == (1 if "gpu=1" in body else 0), name


def test_trees_of_earlier_settings_are_moved_aside_and_foreign_folders_refused(tmp_path):
    """`segment cv` reads every tree under SYN: a tree the study no longer plans goes to OUT/dropped/ (the one
    mechanism of every task); a user's file inside one stops the run instead."""
    from prompts import fingerprint
    from prompts.errors import UserError
    from prompts.layout import StudyLayout
    from study import guard, outputs
    from study.segmentation import SegPlan

    plan = SegPlan(study_file=tmp_path / "study.yaml", layout=StudyLayout(tmp_path / "out"), data=tmp_path / "data",
                   pair_files=[], split=tmp_path / "out" / "split.json", split_given=False, folds=[0], trees=["aug"],
                   model="tiny", tiny_model=False)
    fold = plan.layout.synthetic_root / "fold_0"
    for tree in ("aug", "density9.0"):
        (fold / tree / "images").mkdir(parents=True)
        fingerprint.write(fold / tree / "fingerprint.json", {"fold": 0, "tree": tree})
        outputs.seal(fold / tree)
    (fold / "density9.0" / "images" / "mine.txt").write_text("the user's")
    with pytest.raises(UserError, match="mine.txt"):
        guard.check_owned(plan, tmp_path)
    (fold / "density9.0" / "images" / "mine.txt").unlink()
    guard.check_owned(plan, tmp_path)
    moved = outputs.move_aside(plan, plan.stale_outputs())
    assert (moved / "synthetic" / "fold_0" / "density9.0" / "images").is_dir()
    assert sorted(p.name for p in fold.iterdir()) == [".aug.sha256", "aug"]
    assert [d["path"] for d in json.loads(plan.layout.dropped_file.read_text())["dropped"]] == ["synthetic/fold_0/density9.0"]


def test_a_given_split_file_sets_the_folds_and_is_never_written(tmp_path):
    """`data.split`: the user's folds (written here by the workflow's own split command) drive every per-fold job."""
    from prompts.blobs import make_blob_pairs

    make_blob_pairs(tmp_path / "data", n=6, size=32, seed=1)
    (tmp_path / "study.yaml").write_text("study: {output: out, task: segmentation}\ndata: {data: data, split: folds.json}\n"
                                         "controlnet: {model: tiny}\nsegment: {folds: 3, weights: tiny}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "study.segmentation", "split", "--config", "study.yaml", "--output", "folds.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    split = json.loads((tmp_path / "folds.json").read_text())
    assert len(split["folds"]) == 3 and sorted(n for f in split["folds"] for n in f["test"]) == [f"images/blob_{i:03d}.png" for i in range(6)]
    before = (tmp_path / "folds.json").read_bytes()
    res = snakemake(tmp_path, "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert "pairs_split" not in counts and counts["controlnet"] == 3 and counts["pairs"] == 3, counts
    assert (tmp_path / "folds.json").read_bytes() == before


def test_the_study_check_asks_a_segmentation_study_for_its_own_values(tmp_path):
    """`prompts check` (the workflow's check): no LoRA model or templates demanded; folds against the pairs, trees planned."""
    from prompts.blobs import make_blob_pairs
    from prompts.check import check_file

    make_blob_pairs(tmp_path / "data", n=3, size=32, seed=1)
    study = tmp_path / "study.yaml"
    study.write_text("study: {output: out, task: segmentation}\ndata: {data: data}\ncontrolnet: {model: tiny}\nsegment: {folds: 3}\n")
    assert check_file(study) == []
    study.write_text("study: {output: out, task: segmentation}\ndata: {data: data}\n"
                     "controlnet: {model: tiny, augment: false}\nsegment: {folds: 4}\n")
    errors = check_file(study)
    assert len(errors) == 2 and all(e.startswith(f"{study}: ") for e in errors), errors
    assert "controlnet.augment" in errors[0] and "segment.folds 4" in errors[1] and "3 image–mask pairs" in errors[1]


def test_stale_trees_and_controlnets_of_a_segmentation_study_are_found_for_moving_aside(tmp_path):
    """The guard's stale outputs for a SegPlan: trees no longer planned, folds no longer in the split."""
    from prompts.layout import StudyLayout
    from study.outputs import stale_outputs
    from study.segmentation import SegPlan

    plan = SegPlan(study_file=tmp_path / "study.yaml", layout=StudyLayout(tmp_path / "out"), data=tmp_path / "data", pair_files=[],
                   split=tmp_path / "out" / "folds.json", split_given=False, folds=[0], trees=["aug"], model="tiny", tiny_model=True)
    for rel in ("synthetic/fold_0/aug", "synthetic/fold_0/density2.0", "synthetic/fold_1/aug", "controlnet/fold_0/controlnet",
                "controlnet/fold_1/controlnet", "synthetic/fold_0/notes"):
        (plan.out / rel).mkdir(parents=True)
    found = sorted(item["path"].relative_to(plan.out).as_posix() for item in stale_outputs(plan))
    assert found == ["controlnet/fold_1/controlnet", "synthetic/fold_0/density2.0", "synthetic/fold_1/aug"]


def test_stardist_runs_through_the_workflow_beside_the_floor(seg_study, tmp_path):
    """`segment.model: stardist` on (a copy of) the finished study: only the CV and its report re-run (the ControlNets
    and pairs do not depend on the segmentation model), StarDist is scored at native size, the floor beside it."""
    res = snakemake(seg_study, "-n", "--config", "segment={model: stardist}")  # a dry run changes nothing
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(job_counts(res.stdout + res.stderr)) == {"seg_cv", "publish_report", "all"}, res.stdout[-3000:]
    folder = copy_study(seg_study, tmp_path / "copy")
    # The copy has no Snakemake records of its own (they are kept by path): mark its outputs up to date, then run what
    # the dry run listed.
    assert (res := snakemake(folder, "--cores", "1", "--touch")).returncode == 0, res.stderr[-3000:]
    res = snakemake(folder, "--cores", "2", "--config", "segment={model: stardist}", "--forcerun", "seg_cv")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    results = json.loads((folder / "out" / "report" / "results.json").read_text())
    assert results["model"] == "stardist" and results["floor"]["model"] == "otsu-watershed"
    assert all(r["model"] == "stardist" for r in results["runs"])
    assert all((folder / "out" / "report" / p).is_file() for r in results["runs"] for p in r["predictions"])
