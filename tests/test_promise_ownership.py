"""The ownership rule at every depth (issue 26 items 1, 2, 5), without starting Snakemake.

A file under an output folder is the toolkit's only when a record lists it (the folder's
cellsynth-outputs.json, the seal of the folder output it lies in) or its content says so; anything else
is the user's: never deleted or replaced, refused with one line. The same guard serves every command's
--output (`study compare`, `segment cv`, `segment realism`), the search's best study, the study lock on a
folder that cannot be written, and the bounds of `search.workers`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompts.errors import UserError
from study import outputs

from .conftest import ROOT

pytestmark = pytest.mark.unit


def _job_output(folder: Path) -> Path:
    """A folder output as a job leaves it: files at two depths, then sealed."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "deeper" / "b.bin").write_bytes(b"b")
    outputs.seal(folder)
    return folder


def test_a_sealed_folder_is_ours_at_every_depth_and_a_users_file_anywhere_in_it_is_named(tmp_path):
    folder = _job_output(tmp_path / "out" / "lora" / "fold_0" / "good")
    assert outputs.foreign_files(folder) == []
    mine = folder / "sub" / "deeper" / "my_notes.txt"
    mine.write_text("the user's")
    assert outputs.foreign_files(folder) == [mine]
    with pytest.raises(UserError, match="my_notes.txt"):
        outputs.refuse_foreign(folder)
    # a job of ours that never finished (Snakemake marks it incomplete): all of it is that job's
    assert outputs.foreign_files(folder, incomplete=True) == []


def test_a_folder_without_any_record_is_the_users(tmp_path):
    report = tmp_path / "out" / "report"
    report.mkdir(parents=True)
    (report / "figure.png").write_bytes(b"not a png of ours")
    assert [p.name for p in outputs.foreign_files(report)] == ["figure.png"]
    link = tmp_path / "out" / "realism"
    link.symlink_to(tmp_path)  # a symlink where a folder output goes is never ours
    assert outputs.foreign_files(link) == [link]


def test_publishing_claims_every_depth_and_never_replaces_a_users_nested_file(tmp_path):
    from prompts.fingerprint import claimed

    staged = _job_output(tmp_path / ".stage" / "report")
    final = tmp_path / "report"
    outputs.publish(staged, final)
    assert set(claimed(final / "sub" / "deeper")) == {"b.bin"} and outputs.foreign_files(final) == []
    (final / "sub" / "mine.csv").write_text("the user's")
    before = sorted(p.relative_to(final).as_posix() for p in final.rglob("*"))
    with pytest.raises(UserError, match="mine.csv"):
        outputs.publish(staged, final)
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == before
    (final / "sub" / "mine.csv").unlink()
    outputs.publish(staged, final)  # its own: replaced
    assert outputs.foreign_files(final) == []


def test_snakemakes_incomplete_marker_is_read_as_snakemake_writes_it(tmp_path):
    import base64

    from study.lock import snakemake_incomplete

    out = tmp_path / "out" / "lora" / "fold_0" / "good"
    assert not snakemake_incomplete(tmp_path, out)
    marker = tmp_path / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(str(out).encode()).decode()
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert snakemake_incomplete(tmp_path, out)


def test_a_study_lock_that_cannot_be_written_is_one_line(tmp_path):
    from study import lock

    (tmp_path / "out").write_text("a file where the output folder should be")
    with pytest.raises(UserError, match="cannot write there"):
        lock.acquire(tmp_path / "out" / ".study.lock")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path):
    from study import lock

    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write there"):
            lock.acquire(tmp_path / "out" / ".study.lock")
    finally:
        (tmp_path / "out").chmod(0o755)


# --------------------------------------------------------------------------- study compare --output

@pytest.fixture()
def two_studies(tmp_path):
    """Two study files whose data folder is DATA (the comparison's output checks come before their results are read)."""
    (tmp_path / "data").mkdir()
    for name in ("default", "best"):
        (tmp_path / f"{name}.yaml").write_text(f"study: {{output: {name}-out}}\ndata: {{data: data}}\n")
    return tmp_path


@pytest.mark.parametrize("output", ["data/comparison", "data/../data/sub/comparison", "link/comparison"])
def test_study_compare_never_writes_inside_a_data_folder(two_studies, output):
    from study.compare import check_targets

    (two_studies / "link").symlink_to(two_studies / "data")
    with pytest.raises(UserError, match="inside the data folder"):
        check_targets(two_studies / output, [two_studies / "data"])
    assert list((two_studies / "data").iterdir()) == []


def test_study_compare_never_writes_over_a_users_file_or_through_a_symlink(two_studies):
    from prompts.fingerprint import claim
    from study.compare import check_targets

    mine = two_studies / "comparison.html"
    mine.write_text("<p>the user's page</p>")
    with pytest.raises(UserError, match="comparison.html"):
        check_targets(two_studies / "comparison", [two_studies / "data"])
    mine.unlink()
    (two_studies / "elsewhere.html").write_text("the user's")
    mine.symlink_to(two_studies / "elsewhere.html")
    with pytest.raises(UserError, match="comparison.html"):
        check_targets(two_studies / "comparison", [two_studies / "data"])
    mine.unlink()
    claim(two_studies, ["comparison.md", "comparison.html"], "study compare")
    (two_studies / "comparison.html").write_text("ours, from the last run")
    assert [p.name for p in check_targets(two_studies / "comparison", [two_studies / "data"])] == ["comparison.md", "comparison.html"]


def test_study_compare_refuses_from_the_command_line_with_one_line(two_studies):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "study", "compare", "--default", "default.yaml", "--best", "best.yaml",
                          "--output", "data/../data/comparison"], cwd=two_studies, env=env, capture_output=True, text=True)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "inside the data folder" in lines[0], res.stderr
    assert list((two_studies / "data").iterdir()) == []


# --------------------------------------------------------------------------- the search's best study

def test_the_best_study_never_replaces_a_users_study_file(tmp_path):
    from prompts.config import load_study
    from study.search_report import write_best_study

    (tmp_path / "data").mkdir()
    (tmp_path / "study.yaml").write_text("study: {output: out}\ndata: {data: data}\nlora: {model: tiny}\n")
    study = load_study(tmp_path / "study.yaml")
    best = tmp_path / "out" / "search" / "best" / "study.yaml"
    best.parent.mkdir(parents=True)
    best.write_text("# my own study\n")
    with pytest.raises(UserError, match="study.yaml"):
        write_best_study(study, {"rank": 8}, best)
    assert best.read_text() == "# my own study\n"
    best.unlink()
    write_best_study(study, {"rank": 8}, best)
    write_best_study(study, {"rank": 16}, best)  # its own: replaced
    assert load_study(best).lora.rank == 16


# --------------------------------------------------------------------------- segment cv --output --overwrite

def test_segment_cv_overwrite_never_replaces_a_users_report(tmp_path):
    from prompts.blobs import make_blob_pairs

    make_blob_pairs(tmp_path / "data", n=4, size=32, seed=0)
    out = tmp_path / "cv"
    out.mkdir()
    (out / "report.html").write_text("<p>my own report</p>")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-m", "segment", "cv", "--data", "data", "--output", "cv", "--overwrite",
                          "--folds", "2", "--weights", "tiny", "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert res.returncode == 2 and len(errors) == 1 and "report.html" in errors[0], res.stderr[-2000:]
    assert (out / "report.html").read_text() == "<p>my own report</p>" and sorted(p.name for p in out.iterdir()) == ["report.html"]


# --------------------------------------------------------------------------- search.workers bounded

@pytest.mark.parametrize("search, expected", [
    ("{trials: 4, workers: 8}", "search.workers 8 is more than search.trials 4"),
    ("{trials: 200000, workers: 100000}", "search.workers"),
])
def test_search_workers_are_bounded_by_the_trials_and_a_stated_maximum(tmp_path, search, expected):
    from prompts.check import check_file
    from prompts.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "data", per_class={"good": 4, "bad": 4}, cell_lines=["A549"], size=32)
    study = tmp_path / "study.yaml"
    study.write_text(f"study: {{output: out}}\ndata: {{data: data}}\nlora: {{model: tiny}}\nsearch: {search}\n")
    errors = check_file(study)
    assert len(errors) == 1 and expected in errors[0], errors


# --------------------------------------------------------------------------- the files the guard writes itself

def test_a_users_study_yaml_in_the_output_folder_is_refused_and_the_workflows_own_rewritten(tmp_path):
    from prompts.layout import StudyLayout
    from study import guard
    from study.segmentation import SegPlan

    plan = SegPlan(study_file=tmp_path / "study.yaml", layout=StudyLayout(tmp_path / "out"), data=tmp_path / "data",
                   pair_files=[], split=tmp_path / "out" / "folds.json", split_given=False, folds=[0], trees=["aug"],
                   model="tiny", tiny_model=False)
    mine = plan.layout.study_file
    mine.parent.mkdir(parents=True)
    mine.write_text("study: {output: .}\n")
    with pytest.raises(UserError, match="study.yaml"):
        guard.check_owned(plan, tmp_path)
    assert mine.read_text() == "study: {output: .}\n"
    mine.write_text(guard._STUDY_HEADER + " (an earlier run)\n")
    guard.check_owned(plan, tmp_path)


# --------------------------------------------------------------------------- one plan interface

@pytest.mark.parametrize("task", __import__("study.tasks", fromlist=["names"]).names())
def test_every_registered_tasks_plan_implements_the_one_plan_interface(task, tmp_path):
    import yaml

    from study import tasks
    from study.plan import from_config

    tasks.get(task).example(tmp_path)
    plan = from_config(yaml.safe_load((tmp_path / "study.yaml").read_text()), tmp_path / "study.yaml")
    assert isinstance(plan, tasks.StudyPlan) and plan.task == task
    out = plan.layout.out
    assert all(Path(p).is_relative_to(out) for p in plan.targets() + plan.folder_outputs())  # every path from StudyLayout
    assert plan.stale_outputs() == [] and not out.exists()  # planning writes nothing
