"""The workflow's promises, once for every study task (issue 25 item 5): a task registered in study/tasks.py
gets them without copying a test.

- publishing never deletes a user's file, at any depth of the study's output, and a file there before
  the first report stops the run before any job;
- a bad value gives one identical line (exit 2) through `prompts check`, `python -m study.run` and bare snakemake;
- outputs of earlier settings are moved to OUT/dropped/ and listed in OUT/synthetic/dropped.json;
- a deleted file of an intermediate folder re-runs the job that made it;
- a finished study is up to date through every documented command, whichever interpreter path runs it,
  and after the toolkit's folder moved.

Each task's smallest study (`Task.example`) runs once per session (`python -m study.run`, the command
`make study` runs); the tests that change anything work on a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytest.importorskip("snakemake")
pytest.importorskip("torch")

pytestmark = pytest.mark.workflow

from study import tasks  # noqa: E402

TASKS = tasks.names()
SNAKEFILE = ROOT / "workflow" / "Snakefile"
BIN = Path(sys.executable).parent


def _env(root: Path = ROOT) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(folder: Path, *cmd: str, root: Path = ROOT, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=folder, env=_env(root), capture_output=True, text=True, timeout=timeout)


def study_run(folder: Path, *args: str, python: str = sys.executable, root: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m study.run ARGS --configfile study.yaml` (what `make study` and `make demo` run)."""
    return run(folder, python, "-m", "study.run", *args, "--configfile", "study.yaml", root=root)


def bare_snakemake(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -s workflow/Snakefile --configfile study.yaml ARGS` (what `make demo-seg` runs)."""
    return run(folder, BIN / "snakemake", "-s", SNAKEFILE, "--configfile", "study.yaml", *args)


def errors(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def nothing_to_do(res: subprocess.CompletedProcess) -> bool:
    return res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr


@pytest.fixture(scope="session", params=TASKS)
def finished(request, tmp_path_factory) -> tuple[str, Path]:
    """(task, a folder holding the task's example study, run to the end once per session).

    Classification's is the session's small study (`local_run`, run once for every test that reads it), not a
    second classification study, and segmentation's the session's `seg_study`; their tests are grouped with the other
    tests of those studies (tests/conftest.py)."""
    task = request.param
    if task == "classification":
        from .studies import local_study

        return task, local_study(tmp_path_factory, request.getfixturevalue("demo_data"))
    if task == "segmentation":  # the segmentation workflow tests' study (its example's settings, 2 U-Net epochs)
        return task, request.getfixturevalue("seg_study")
    folder = tmp_path_factory.getbasetemp() / f"promise-{task}"
    if not (folder / "done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        tasks.get(task).example(folder)
        res = study_run(folder, "--cores", "2")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        (folder / "done").write_text("")
    return task, folder


def copy_of(finished_folder: Path, dst: Path) -> Path:
    """A copy of a finished study (times kept: its outputs are up to date there too)."""
    shutil.copytree(finished_folder, dst, symlinks=True)
    return dst


def plan_of(folder: Path, overrides: dict | None = None):
    from snakemake.utils import update_config

    from study.plan import from_config

    raw = yaml.safe_load((folder / "study.yaml").read_text())
    update_config(raw, overrides or {})
    return from_config(raw, folder / "study.yaml")


def flow(overrides: dict) -> list[str]:
    """`--config` arguments for a study override ({section: {key: value}})."""
    return ["--config", *(f"{section}={json.dumps(values)}" for section, values in overrides.items())]


# --------------------------------------------------------------------------- stable re-runs

def test_a_finished_study_is_up_to_date_through_every_documented_command(finished, tmp_path):
    task, folder = finished
    other = BIN / ("python3" if Path(sys.executable).name == "python" else "python")  # the other name of the venv's python
    assert nothing_to_do(res := study_run(folder, "-n")), res.stdout[-3000:] + res.stderr[-3000:]
    assert nothing_to_do(res := study_run(folder, "-n", python=str(other))), res.stdout[-3000:]
    assert nothing_to_do(res := bare_snakemake(folder, "-n")), res.stdout[-3000:]
    # `make study` (and `make demo`), with the install step taken as done
    res = run(ROOT, "make", "-s", "-o", "install", "study", f"BIN={BIN}", f"CONFIG={folder / 'study.yaml'}",
              f"SNAKEMAKE_ARGS=-n --directory {folder}")
    assert nothing_to_do(res), res.stdout[-3000:] + res.stderr[-3000:]
    # the toolkit's folder moved (here: copied elsewhere and run from there)
    moved = tmp_path / "moved-toolkit"
    shutil.copytree(ROOT, moved, ignore=shutil.ignore_patterns(".git", ".venv", "tests", "demo", "demo-seg", ".snakemake",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))
    res = study_run(folder, "-n", root=moved)
    assert nothing_to_do(res), res.stdout[-3000:] + res.stderr[-3000:]


# --------------------------------------------------------------------------- the user's files

def _deep_dirs(plan) -> list[Path]:
    """The deepest folder inside the published report, and inside the first and the last sealed folder outputs."""
    def deepest(folder: Path) -> Path:
        dirs = [p for p in Path(folder).rglob("*") if p.is_dir()] or [Path(folder)]
        return max(dirs, key=lambda p: (len(p.parts), str(p)))

    sealed = plan.sealed_folders()  # every task's: its intermediates first, then realism and the report
    return [plan.layout.report_dir, deepest(plan.layout.report_dir), deepest(sealed[0]), deepest(sealed[-3])]


def test_a_users_file_anywhere_in_a_folder_output_stops_the_run_and_is_kept(finished, tmp_path):
    task, folder = finished
    copy = copy_of(folder, tmp_path / "study")
    for where in _deep_dirs(plan_of(copy)):
        mine = where / "my_notes.txt"
        mine.write_text("the user's")
        # a changed setting re-runs the CV and its report: the guard refuses before any job all the same
        res = study_run(copy, "--cores", "1", *flow(tasks.get(task).stale_change))
        assert res.returncode == 2 and len(errors(res)) == 1 and str(mine) in errors(res)[0], res.stderr[-3000:]
        assert "Traceback" not in res.stderr and mine.read_text() == "the user's"
        mine.unlink()
    assert nothing_to_do(res := study_run(copy, "-n")), res.stdout[-3000:]


def test_a_file_in_the_report_folder_before_the_first_report_stops_the_run_before_any_job(tmp_path):
    for task in TASKS:
        folder = tmp_path / task
        folder.mkdir()
        tasks.get(task).example(folder)
        mine = folder / "out" / "report" / "figure.png"
        mine.parent.mkdir(parents=True)
        mine.write_bytes(b"the user's figure")
        res = study_run(folder, "--cores", "1")
        assert res.returncode == 2 and len(errors(res)) == 1 and str(mine) in errors(res)[0], res.stderr[-3000:]
        assert sorted(p.name for p in (folder / "out").iterdir()) == [".study.lock", "report"]  # nothing ran
        assert mine.read_bytes() == b"the user's figure"


# --------------------------------------------------------------------------- one check, one line

@pytest.mark.parametrize("task", TASKS)
def test_a_bad_value_is_one_identical_line_through_prompts_check_and_the_workflow(task, tmp_path):
    from snakemake.utils import update_config

    entry = tasks.get(task)
    entry.example(tmp_path)
    study = tmp_path / "study.yaml"
    good = yaml.safe_load(study.read_text())
    for override, expected in (entry.bad_value, ({"search": {"trials": 3, "workers": 4}}, "search.workers 4")):
        raw = json.loads(json.dumps(good))
        update_config(raw, override)
        study.write_text(yaml.safe_dump(raw))
        lines = []
        for res in (run(tmp_path, sys.executable, "-m", "prompts", "check", study), study_run(tmp_path, "-n"),
                    bare_snakemake(tmp_path, "-n")):
            assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
            lines.append(errors(res))
        assert lines[0] == lines[1] == lines[2] and len(lines[0]) == 1 and expected in lines[0][0], lines
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- outputs of earlier settings

def test_outputs_of_earlier_settings_are_moved_aside_and_listed(finished, tmp_path):
    from study import guard

    task, folder = finished
    copy = copy_of(folder, tmp_path / "study")
    change = tasks.get(task).stale_change
    res = study_run(copy, "-n", *flow(change))
    assert res.returncode == 0 and "would move aside" in res.stderr, res.stderr[-3000:]
    plan = plan_of(copy, change)
    stale = plan.stale_outputs()
    assert stale and all(Path(item["path"]).is_dir() for item in stale)  # a dry run moves nothing
    guard.start(plan, "run", copy)  # what the workflow does before any job
    dropped = json.loads(plan.layout.dropped_file.read_text())["dropped"]
    assert sorted(d["path"] for d in dropped) == sorted(Path(i["path"]).relative_to(plan.out).as_posix() for i in stale)
    for d in dropped:
        assert (plan.out / d["moved_to"]).is_dir() and not (plan.out / d["path"]).exists()
        assert d["moved_to"].startswith("dropped/") and d["reason"]
    assert not list(plan.out.rglob(".aside"))


# --------------------------------------------------------------------------- deleted intermediates

def test_a_deleted_file_of_an_intermediate_reruns_its_job(finished, tmp_path):
    task, folder = finished
    copy = copy_of(folder, tmp_path / "study")
    first = Path(plan_of(copy).sealed_folders()[0])
    victim = next(p for p in sorted(first.rglob("*")) if p.is_file() and not p.name.startswith((".", "cellsynth-")))
    victim.unlink()
    res = study_run(copy, "-n")
    assert res.returncode == 0 and not nothing_to_do(res), res.stdout[-3000:]
    assert f"output: {first}," in res.stdout or f"output: {first}\n" in res.stdout, res.stdout[-3000:]
    assert "changed since its job wrote it" in res.stderr
