"""The workflow's study-level promises: Snakemake-native config, one check before any job (the same as
`prompts check`), one run per study output, stale locks after kill -9, deleted outputs noticed,
outputs of earlier settings moved aside, and a failing job that keeps the last good report.

Most tests use the small study of tests/studies.py (`local_run` in tests/conftest.py, run once per
session) or a copy of it (`copy_study`: hard links for the large files); the bad-input tests need no run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT
from .studies import SNAKEFILE, SNAKEMAKE, copy_study, copy_without, job_counts, snakemake, study_text, write_study

pytest.importorskip("snakemake")


CV_ONLY = {"cv": 1, "publish_report": 1, "all": 1}


def run_py(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------------- the JSON Schema

def test_the_committed_json_schema_is_generated_from_the_schema():
    from prompts.schema.json_schema import json_schema_yaml

    committed = ROOT / "workflow" / "schemas" / "study.schema.yaml"
    assert committed.read_text() == json_schema_yaml(), (
        "workflow/schemas/study.schema.yaml is stale: run python -m prompts schema --json-schema workflow/schemas/study.schema.yaml")


def test_the_json_schema_agrees_with_the_check_on_keys_types_and_ranges():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "study.schema.yaml").read_text())
    good = yaml.safe_load(study_text())
    jsonschema.validate(good, schema)
    for bad in ({"lora": {"epoch": 3}}, {"classify": {"folds": 1}}, {"generate": {"lora_weights": ["x"]}},
                {"nosection": {}}, {"study": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, **bad} if "study" not in bad else {**good, "study": {}}, schema)


def test_workflow_required_keys_are_read_from_the_schema():
    from prompts.config import load_study, missing_required

    study = load_study(None)
    assert set(missing_required(study, "workflow")) == {"study.output", "data.data", "lora.model"}


# --------------------------------------------------------------------------- Snakemake's config

def test_a_config_override_plans_the_cv_again_and_the_reason_names_the_key(local_run):
    res = snakemake(local_run, "-n", "--cores", "2", "--config", "classify={epochs: 3}")
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert job_counts(log) == CV_ONLY
    assert "classify.epochs=3" in log and "classify.epochs=2" in log  # readable params in the reason


def test_configfiles_are_merged_and_paths_stay_relative_to_the_first(local_run, tmp_path):
    overlay = tmp_path / "more.yaml"  # another folder: its own relative paths would point elsewhere
    overlay.write_text("classify: {epochs: 3}\n")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "-n", "--cores", "2", "--configfile", "study.yaml",
                          str(overlay)], cwd=local_run, env=full_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stdout + res.stderr) == CV_ONLY


# --------------------------------------------------------------------------- one check, before any job

def _study(tmp_path: Path, demo_data: Path, **edits) -> Path:
    """A study folder (data copy, templates) whose study.yaml has `edits` ({"section.key": value} or None to drop)."""
    write_study(tmp_path, demo_data)
    raw = yaml.safe_load(study_text())
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        if value is None:
            raw[section].pop(key, None)
        else:
            raw.setdefault(section, {})[key] = value
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


BAD_VALUES = {
    "mix typo": ({"classify.mixes": ["real", "real+abc"]}, "classify.mixes"),
    "mix name": ({"classify.mixes": ["real50"]}, "real50"),
    "weights typo": ({"classify.weights": "calibrate"}, "classify.weights"),
    "model path": ({"lora.model": "../../nomodel"}, "lora.model"),
    "templates file": ({"data.templates": "nothere.yaml"}, "data.templates"),
    "split file": ({"data.split": "nosplit.json"}, "data.split"),
    "blind folder": ({"classify.blind": "noblind"}, "classify.blind"),
    "group_by column": ({"classify.group_by": "nosuchcolumn"}, "classify.group_by"),
    "folds above the smallest class": ({"classify.folds": 7, "classify.group_by": None}, "classify.folds 7"),
    "output is the data": ({"study.output": "data"}, "inside the data folder"),
    "output inside the data": ({"study.output": "data/out"}, "inside the data folder"),
    "minority class": ({"classify.minority_class": "nosuch"}, "classify.minority_class"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_one_line_from_prompts_check_and_from_the_workflow_before_any_job(tmp_path, demo_data, case):
    edits, words = BAD_VALUES[case]
    folder = _study(tmp_path, demo_data, **edits)
    check = run_py("-m", "prompts", "check", "study.yaml", cwd=folder)
    flow = snakemake(folder, "--cores", "1")
    for res in (check, flow):
        assert res.returncode == 2, (case, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
    assert error_lines(check) and error_lines(check) == error_lines(flow), (check.stderr, flow.stderr)
    assert words in error_lines(check)[0], error_lines(check)
    assert not (folder / "out").exists() or case.startswith("output")


# Files Snakemake itself reads before the workflow starts: the workflow's entry point checks them first.
BAD_FILES = {
    "empty file": (b"", "is empty"),
    "YAML syntax error": (b"study: {output: out\n", "not valid YAML"),
    "top-level list": (b"- study\n- data\n", "must be a mapping"),
    "binary file": (bytes(range(256)) * 4, "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_an_unreadable_study_file_is_one_line_and_exit_2_from_check_and_from_the_workflow(tmp_path, case):
    content, words = BAD_FILES[case]
    (tmp_path / "study.yaml").write_bytes(content)
    check = run_py("-m", "prompts", "check", "study.yaml", cwd=tmp_path)
    flow = run_py("-m", "study.run", "--cores", "1", "--configfile", "study.yaml", cwd=tmp_path)
    for res in (check, flow):
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert len(error_lines(res)) == 1 and words in error_lines(res)[0], res.stderr
    assert error_lines(check) == error_lines(flow)


def test_no_configfile_and_an_output_that_is_a_file_are_one_line_and_exit_2(tmp_path, demo_data):
    folder = _study(tmp_path, demo_data)
    res = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--cores", "1"], cwd=folder, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and error_lines(res) == [
        "error: give the study file: snakemake --cores all --configfile STUDY.yaml"], res.stderr[-2000:]
    (folder / "out").write_text("a file of mine\n")
    res = snakemake(folder, "--cores", "1")
    assert res.returncode == 2 and "is an existing file" in error_lines(res)[0], res.stderr[-2000:]
    assert (folder / "out").read_text() == "a file of mine\n"


# --------------------------------------------------------------------------- result keys, generated from the schema

def _changed(value, f, hint):
    """Another valid value of a schema field (within its bounds), or None where none is obvious."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Literal:
        return next((a for a in typing.get_args(hint) if a != value), None)
    if hint is bool:
        return not value
    if origin is list:
        return list(value) + (["real+33"] if typing.get_args(hint)[0] is str else [0.5])
    if hint is int or (args and args[0] is int and value is None):
        return (value or 0) + 1 if f.metadata.get("le") is None or (value or 0) + 1 <= f.metadata["le"] else value - 1
    if hint is float or (args and args[0] is float):
        return (value or 0.5) * 0.5 if value else 0.5
    if hint is str or (args and args[0] is str):
        return None  # names and paths: their own tests (mixes, weights, models) above
    return None


# The rules each section's result keys reach (classify keys: the table of study/plan.py, written here independently).
EXPECTED = {
    "lora": {"lora"}, "generate": {"generate"},
    "classify": {"cv"}, "data": {"split", "calibrate", "lora", "generate", "realism", "cv"},
}
CLASSIFY_ALSO = {"folds": {"split"}, "repeats": {"split"}, "group_by": {"split"}, "seed": {"split", "calibrate", "realism"},
                 "backbone": {"calibrate", "realism"}, "image_size": {"calibrate", "realism"}, "weights": {"realism"}}


def _result_keys():
    from prompts.schema import SECTIONS
    from prompts.schema.data import PAIR_KEYS

    for name in ("data", "lora", "generate", "classify"):
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if name == "data" and f.name in PAIR_KEYS:
                continue  # segmentation pairs only: a classification study's jobs do not read them
            if f.metadata.get("result", True) and not f.metadata.get("path"):
                yield name, f, hints[f.name]


def test_every_result_key_of_the_schema_re_runs_exactly_the_jobs_that_read_it():
    from prompts.config import field_default, load_study
    from study.plan import rule_settings

    base = rule_settings(load_study(None))
    covered = 0
    for name, f, hint in _result_keys():
        new = _changed(field_default(f), f, hint)
        if new is None:
            continue
        study = load_study(None)
        setattr(getattr(study, name), f.name, new)
        after = rule_settings(study)
        changed = {rule for rule in base if base[rule] != after[rule]}
        expected = EXPECTED[name] | (CLASSIFY_ALSO.get(f.name, set()) if name == "classify" else set())
        if f"{name}.{f.name}" == "generate.lora_weights":
            assert changed == set()  # each generate job's weight is its output path: the set of jobs changes instead
            continue
        assert changed == expected, (f"{name}.{f.name}", changed)
        readable = [v for rule in changed for v in after[rule].values() if v.startswith(f"{name}.{f.name}=")]
        assert readable, f"{name}.{f.name} is not named in the params"
        covered += 1
    assert covered >= 40


DRY_RUN_CHANGES = {
    "lora.epochs": ("lora={epochs: 2}", {"lora": 6, "generate": 4, "synthetic_manifest": 1, "realism": 1,
                                        "publish_realism": 1, **CV_ONLY}),
    "generate.steps": ("generate={steps: 3}", {"generate": 4, "synthetic_manifest": 1, "realism": 1,
                                               "publish_realism": 1, **CV_ONLY}),
    "classify.learning_rate": ("classify={learning_rate: 0.002}", CV_ONLY),
    "generate.lora_weights": ("generate={lora_weights: [0.8]}", {"synthetic_manifest": 1, "realism": 1,
                                                                  "publish_realism": 1, **CV_ONLY}),
    "classify.image_size": ("classify={image_size: 40}", {"calibrate_weights": 1, "realism": 1, "publish_realism": 1,
                                                          **CV_ONLY}),
}


@pytest.mark.parametrize("key", list(DRY_RUN_CHANGES))
def test_a_dry_run_lists_the_jobs_of_one_changed_key(local_run, key):
    override, expected = DRY_RUN_CHANGES[key]
    res = snakemake(local_run, "-n", "--cores", "2", "--config", override)
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stdout + res.stderr) == expected


def test_adding_a_blind_test_folder_re_runs_the_cv(local_run, tmp_path):
    blind = tmp_path / "blind"
    blind.mkdir()
    (blind / "blind_scores.json").write_text("{}\n")
    res = snakemake(local_run, "-n", "--cores", "2", "--config", f"classify={{blind: {blind}}}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stdout + res.stderr) == CV_ONLY


# --------------------------------------------------------------------------- outputs the workflow depends on

def test_a_deleted_lora_file_re_runs_its_job_and_everything_after_it(local_run):
    folder = local_run / "out" / "lora" / "fold_0" / "good"
    weights = folder / "pytorch_lora_weights.safetensors"
    seal = folder.parent / ".good.sha256"
    saved, seal_saved, stat, wstat = weights.read_bytes(), seal.read_bytes(), seal.stat(), weights.stat()
    weights.unlink()
    try:
        res = snakemake(local_run, "-n", "--cores", "2")
        assert res.returncode == 0, res.stderr[-3000:]
        assert job_counts(res.stdout + res.stderr) == {"lora": 1, "generate": 2, "synthetic_manifest": 1, "realism": 1,
                                                       "publish_realism": 1, **CV_ONLY}, res.stderr[-3000:]
        assert f"{folder} changed since its job wrote it" in res.stderr
    finally:
        weights.write_bytes(saved)
        seal.write_bytes(seal_saved)
        os.utime(seal, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.utime(weights, ns=(wstat.st_atime_ns, wstat.st_mtime_ns))
    again = snakemake(local_run, "-n", "--cores", "2")
    assert job_counts(again.stdout + again.stderr) == {}


def test_a_failing_cv_keeps_the_last_good_report(local_run, tmp_path):
    folder = copy_study(local_run, tmp_path / "copy")
    report = folder / "out" / "report" / "report.html"
    before = report.read_bytes()
    # The copy has no Snakemake records of its own (they are kept by path): mark its outputs up to date.
    touched = snakemake(folder, "--cores", "1", "--touch")
    assert touched.returncode == 0, touched.stderr[-3000:]
    # A broken Keras backend makes the CV job fail after Snakemake removed the job's outputs.
    res = snakemake(folder, "--cores", "1", "--forcerun", "cv", env={"KERAS_BACKEND": "no-such-backend"})
    assert res.returncode != 0 and "Error in rule cv" in res.stdout + res.stderr, (res.stdout + res.stderr)[-4000:]
    assert report.read_bytes() == before
    assert not (folder / "out" / ".stage" / "report").exists()  # the failed job's own (staged) output is gone


# --------------------------------------------------------------------------- outputs of earlier settings

def test_outputs_of_earlier_settings_are_moved_aside_and_listed(local_run, tmp_path):
    folder = copy_study(local_run, tmp_path / "copy")
    dry = snakemake(folder, "-n", "--cores", "1", "--config", "generate={lora_weights: [0.8]}")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "would move aside" in dry.stderr and "w1.0" in dry.stderr
    assert (folder / "out" / "synthetic" / "fold_0" / "w1.0").is_dir()  # a dry run moves nothing

    from study import outputs
    from study.plan import from_config

    raw = yaml.safe_load((folder / "study.yaml").read_text())
    raw["generate"]["lora_weights"] = [0.8]
    raw["lora"]["per"] = "class"
    plan = from_config(raw, folder / "study.yaml")
    plan.groups = [g for g in plan.groups if g["group"] != "bad"]  # as if a class had left the study
    stale = outputs.stale_outputs(plan)
    assert sorted(str(s["path"].relative_to(folder / "out")) for s in stale) == [
        "lora/fold_0/bad", "lora/fold_1/bad", "synthetic/fold_0/w1.0", "synthetic/fold_1/w1.0"]
    moved = outputs.move_aside(plan, stale)
    assert (moved / "synthetic" / "fold_0" / "w1.0").is_dir() and not (folder / "out" / "synthetic" / "fold_0" / "w1.0").exists()
    assert not (folder / "out" / "synthetic" / "fold_0" / ".w1.0.sha256").exists()
    dropped = json.loads(plan.layout.dropped_file.read_text())["dropped"]
    assert {d["path"] for d in dropped} == {"lora/fold_0/bad", "lora/fold_1/bad", "synthetic/fold_0/w1.0", "synthetic/fold_1/w1.0"}
    assert all(d["reason"] and d["moved_to"].startswith("dropped/") for d in dropped)


# --------------------------------------------------------------------------- one study output, one run

def _start(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.Popen([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "study.yaml", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def test_a_second_run_on_the_same_output_is_refused_at_once_and_the_first_finishes(local_run, tmp_path):
    folder = copy_without(local_run, tmp_path / "two", "out/lora/fold_0/good", "out/logs/lora/fold_0/good.log")
    target = str(folder / "out" / "lora" / "fold_0" / ".good.sha256")
    first = _start(folder, "--cores", "1", target)
    try:
        _wait_for(folder / "out" / "logs" / "lora" / "fold_0" / "good.log", first)
        t0 = time.time()
        second = snakemake(folder, "--cores", "1", target)
        assert second.returncode == 2 and time.time() - t0 < 60
        lines = error_lines(second)
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "host " in lines[0] and "started " in lines[0], lines
        assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert (folder / "out" / "lora" / "fold_0" / "good" / "pytorch_lora_weights.safetensors").is_file()
    assert (folder / "out" / "folds.json").is_file()


def test_kill_9_of_snakemake_then_a_plain_rerun_clears_its_stale_lock_and_finishes(local_run, tmp_path):
    folder = copy_without(local_run, tmp_path / "killed", "out/lora/fold_0/good", "out/logs/lora/fold_0/good.log")
    target = str(folder / "out" / "lora" / "fold_0" / ".good.sha256")
    run = _start(folder, "--cores", "1", target)
    _wait_for(folder / "out" / "logs" / "lora" / "fold_0" / "good.log", run)
    assert list((folder / ".snakemake" / "locks").glob("*.lock"))
    os.killpg(run.pid, signal.SIGKILL)  # snakemake and its job, as a lost node or kill -9 of the session
    run.wait()
    again = snakemake(folder, "--cores", "1", target)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "removed Snakemake's lock" in again.stderr and "LockException" not in again.stderr
    assert (folder / "out" / "lora" / "fold_0" / "good" / "pytorch_lora_weights.safetensors").is_file()


def test_the_workflow_knows_a_dry_run_from_a_run_and_finds_every_configfile():
    from study.guard import run_kind
    from study.run import configfiles

    class Main:
        remote_exec = subprocess_exec = False

    class Job(Main):
        remote_exec = True

    assert run_kind(["snakemake", "--cores", "2"], Main()) == "run"
    for flags in (["-n"], ["-np"], ["--dry-run"], ["--unlock"], ["--report", "r.zip"]):
        assert run_kind(["snakemake", *flags], Main()) == "dry", flags
    assert run_kind(["snakemake", "--cores", "2"], Job()) == "job"
    assert configfiles(["--cores", "1", "--configfile", "a.yaml", "b.yaml", "-n"]) == ["a.yaml", "b.yaml"]
    assert configfiles(["--configfile=a.yaml", "--config", "x=1"]) == ["a.yaml"]


def test_a_held_study_lock_names_its_holder(tmp_path):
    lock_file = tmp_path / "out" / ".study.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from study.lock import acquire; "
                               f"assert acquire({str(lock_file)!r}); print('held', flush=True); time.sleep(60)"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from study.lock import acquire, refuse

        assert not acquire(lock_file)
        assert f"pid {holder.pid}" in str(refuse(lock_file))
    finally:
        holder.kill()
        holder.wait()
    assert acquire(lock_file)  # the kernel released it with its process


def test_publishing_a_report_never_deletes_a_file_the_user_put_there(tmp_path):
    """OUT/report is replaced whole by a new report, but a figure the user saved into it is not ours to delete."""
    from prompts.errors import UserError
    from prompts.fingerprint import claim
    from study.outputs import publish

    staged, final = tmp_path / ".stage" / "report", tmp_path / "report"
    staged.mkdir(parents=True)
    (staged / "report.md").write_text("new")
    final.mkdir()
    (final / "report.md").write_text("old")
    claim(final, ["report.md"], "classify cv")
    (final / "my_figure.png").write_bytes(b"the user's")
    with pytest.raises(UserError, match=r"my_figure.png was not written by the toolkit.*nothing was run or replaced"):
        publish(staged, final)
    assert (final / "my_figure.png").read_bytes() == b"the user's" and (final / "report.md").read_text() == "old"
    (final / "my_figure.png").unlink()  # the user moved it out: the new report goes in
    publish(staged, final)
    assert (final / "report.md").read_text() == "new"
