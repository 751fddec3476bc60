"""The search as workflow jobs: `snakemake --configfile study.yaml search` with 2 trial workers on the tiny model
(one killed mid-trial), then the best study in its own folder, then the comparison report; the default study's
files stay byte-identical. 2 classes x 8 demo images at 32 px, 2 folds, 3 trials. Both studies train a fold's LoRAs
in one job (`lora.together: all`), the best study because the default one does. The same search on the one-node
SLURM runs in the background beside it, on a copy of the same finished default study.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .studies import SLURM_FLAGS, copy_study, start_snakemake
from .test_workflow import SNAKEFILE, SNAKEMAKE, snakemake

STUDY = """\
study: {output: out}
data: {data: data, templates: templates.yaml}
lora: {model: tiny, per: class, repeats: 1, epochs: 1, batch_size: 2, resolution: 32, rank: 4, alpha: 4.0, validation_images: 0,
       together: all}
generate: {steps: 2, size: [32, 32], batch_size: 8, lora_weights: [1.0], fraction: [0.5], seed: 0}
classify: {folds: 2, group_by: "regex:^\\\\d{8}", backbone: EfficientNetB0, weights: calibrated, image_size: 32, epochs: 1,
           augment: false, mixes: [real, real+50]}
search: {workers: 2, trials: 3, images_per_class: 2, rank: [2, 4], alpha_ratio: [1.0], unet_lr: "1e-4..1e-3 log",
         text_encoder_lr: [0.0], epochs: [1], network: [attention], lora_weight: [0.8, 1.0], pruner: none}
"""


def _study_folder(tmp_path: Path) -> Path:
    from prompts.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "data", per_class={"good": 8, "bad": 8}, size=32)
    templates = (ROOT / "prompts" / "default_templates.yaml").read_text()
    (tmp_path / "templates.yaml").write_text(re.sub(r"(?m)^  acceptable:.*\n", "", templates))  # the data's 2 classes
    (tmp_path / "study.yaml").write_text(STUDY)
    return tmp_path


def _hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def _trials(search: Path):
    import optuna

    from study.search import open_storage

    return optuna.load_study(study_name="lora-search", storage=open_storage(str(search / "search.journal"))).get_trials()


def _kill_first_running_worker(search: Path, proc: subprocess.Popen, deadline: float) -> int:
    """kill -9 the worker process of the first RUNNING trial (its pid is a user attribute); returns the trial number."""
    while time.time() < deadline and proc.poll() is None:
        if (search / "search.journal").is_file():
            running = [t for t in _trials(search) if t.state.name == "RUNNING" and "pid" in t.user_attrs]
            if running:
                os.kill(int(running[0].user_attrs["pid"]), signal.SIGKILL)
                return running[0].number
        time.sleep(0.5)
    raise AssertionError("no trial started")


def _overlap(a, b) -> bool:
    return a.datetime_start < (b.datetime_complete or b.datetime_start) and b.datetime_start < (a.datetime_complete or a.datetime_start)


# The search on the SLURM profile (tests/studies.py `SLURM_FLAGS`), sized for the one-node test cluster (2 CPUs, no GPU).
SEARCH_RULES = ("tiny_model", "split", "calibrate_weights", "search_worker", "search_report")
SLURM_SEARCH_ARGS = (
    *SLURM_FLAGS, "search", "--config", "search={trials: 2}",
    "--set-resources", *[f"{r}:mem_mb=1500" for r in SEARCH_RULES], "search_worker:gpu=0", "search_report:gpu=0",
    "--set-threads", "search_worker=1", "search_report=1", "calibrate_weights=1",
)
_SLURM_SEARCH = pytest.StashKey()


@pytest.fixture(scope="module")
def search_study(tmp_path_factory, request) -> Path:
    """The default study run to the end, once for both searches.

    When this session has the SLURM search test, that search starts here, in the background, on a copy of the
    finished study (its split, tiny model and calibrated weights are up to date there, so only the search's own jobs
    go to SLURM): most of a SLURM run is waiting for the plugin's next status check, time the local search uses.
    """
    folder = _study_folder(tmp_path_factory.mktemp("search-study"))
    res = snakemake(folder, "--cores", "2", "all")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    if any("slurm_search" in getattr(item, "fixturenames", ()) for item in request.session.items):
        try:
            cluster = request.getfixturevalue("slurm_cluster")
        except pytest.skip.Exception:
            return folder  # the SLURM search test skips with the reason
        copy = copy_study(folder, folder.with_name(folder.name + "-slurm"))
        run = start_snakemake(copy, *SLURM_SEARCH_ARGS, env=cluster)
        request.config.stash[_SLURM_SEARCH] = (copy, run)
        request.addfinalizer(run.stop)
    return folder


@pytest.fixture(scope="module")
def slurm_search(search_study, slurm_cluster, request) -> tuple[Path, str]:
    """(the study folder, the log) of the SLURM search started by `search_study`, once it has finished."""
    folder, run = request.config.stash[_SLURM_SEARCH]
    return folder, run.wait()


def test_each_folds_loras_come_from_one_joint_job_and_each_group_folder_is_sealed(search_study):
    """`lora.together: all` in a whole study: one `lora_together_0` job per fold wrote each class's LoRA folder and
    its seal, as one job per class would; the finished study has nothing left to do."""
    from study.outputs import is_intact

    for fold in ("fold_0", "fold_1"):
        lora = search_study / "out" / "lora" / fold
        for group in ("bad", "good"):
            assert (lora / group / "pytorch_lora_weights.safetensors").is_file() and (lora / f".{group}.sha256").is_file()
            assert is_intact(lora / group), (fold, group)
        logs = sorted(p.name for p in (search_study / "out" / "logs" / "lora" / fold).iterdir())
        assert logs == ["together_0.log"], logs
    res = snakemake(search_study, "-n", "all")
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.mark.slow
def test_search_target_with_two_workers_then_best_study_and_comparison(search_study):
    folder = search_study
    out, search = folder / "out", folder / "out" / "search"
    before = _hashes(out)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "study.yaml", "--cores", "2", "search"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = _kill_first_running_worker(search, proc, time.time() + 600)
    log = proc.communicate(timeout=1800)[0]
    assert proc.returncode == 0, log[-5000:]

    trials = {t.number: t for t in _trials(search)}
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and trials[killed].state.name == "FAIL", [(t.number, t.state.name) for t in trials.values()]
    assert not [t for t in trials.values() if t.state.name == "RUNNING"]
    assert sorted(int(p.name) for p in (search / "trials").iterdir()) == sorted(t.number for t in complete)
    timed = [t for t in trials.values() if t.datetime_start and "pid" in t.user_attrs]
    assert any(a.user_attrs["pid"] != b.user_attrs["pid"] and _overlap(a, b) for a in timed for b in timed), \
        "two workers ran trials at the same time"
    page = (search / "search.html").read_text()
    assert 'id="smoke"' in page and 'id="importance-note"' in page and "fewer than 20" in page

    best_file = search / "best" / "study.yaml"
    from prompts.config import load_study

    best = load_study(best_file)
    assert Path(best.study.output) == (search / "best").resolve() and best.lora.model == "tiny"
    assert str(best.lora.together) == "all"  # the user's settings stay; only the searched keys change
    assert best.classify.weights == "calibrated" and Path(best.data.split) == (out / "folds.json").resolve()
    res = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", str(best_file), "--directory",
                          str(best_file.parent), "--cores", "2"], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert sorted(p.name for p in (search / "best" / "lora").iterdir()) == ["fold_0", "fold_1"]  # per-fold LoRAs
    for fold in ("fold_0", "fold_1"):  # one joint job per fold wrote and sealed both classes' LoRAs
        assert (search / "best" / "logs" / "lora" / fold / "together_0.log").is_file()
        assert all((search / "best" / "lora" / fold / f".{c}.sha256").is_file() for c in ("bad", "good"))
    assert (search / "best" / "realism" / "realism.json").is_file() and (search / "best" / "report" / "report.html").is_file()

    res = snakemake(folder, "--cores", "1", "compare")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    md = (out / "comparison.md").read_text()
    assert "## Settings that differ" in md and "held-out folds" in md and "two-sample accuracy" in md
    assert re.search(r"\| best \| w[\d.]+ \| real\+50 \| 1 \|", md) and re.search(r"\| default \| w1\.0 \| real\+50 \| 2 \|", md)
    assert re.search(r"(helps|hurts|equivalent|inconclusive)", md) and 'id="smoke"' in (out / "comparison.html").read_text()

    after = _hashes(out)
    from prompts.layout import OUTPUTS_FILE, StudyLayout

    run_record = StudyLayout.LOCK_FILE  # who holds the study now (host, pid, start): a run's record, not a study file
    # OUT's own outputs record gains the search's folders (the toolkit's from now on): a record, not a study file
    skip = {run_record, OUTPUTS_FILE}
    assert {k: after[k] for k in before if k not in skip} == {k: v for k, v in before.items() if k not in skip}, \
        "the default study's files changed"
    shutil.rmtree(search / "best" / ".snakemake", ignore_errors=True)


@pytest.mark.slow
def test_search_workers_run_as_slurm_jobs(slurm_search):
    """The search target on the SLURM profile: the two workers (and the report) are SLURM jobs; 2 complete trials
    (one per worker: the test above checks how trials are shared)."""
    folder, log = slurm_search
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid \d+ \(log: .*?/rule_(\w+)/", log)
    assert submitted.count("search_worker") == 2 and submitted.count("search_report") == 1, submitted
    trials = _trials(folder / "out" / "search")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and not [t for t in trials if t.state.name == "RUNNING"]
    assert (folder / "out" / "search" / "best" / "study.yaml").is_file()
