"""The whole study through Snakemake (workflow/Snakefile): end to end, exact re-runs, kill -9, GPU slots, bad input.

One small study (2 folds x 3 classes = 6 LoRAs, 2 LoRA weights, tiny model, calibrated stand-in
weights, 32-64 px) runs once per session (`local_run` in tests/conftest.py, from tests/studies.py; shared with tests/test_slurm.py, which
compares its SLURM run with it); the dry-run tests change one setting or file of that study and
restore it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .studies import (  # noqa: F401  (re-exported: other test modules import them from here)
    GPUS,
    SNAKEFILE,
    SNAKEMAKE,
    STUDY,
    copy_without,
    job_counts,
    local_study,
    snakemake,
    study_text,
    write_study,
)

pytest.importorskip("snakemake")

# --------------------------------------------------------------------------- bad input

def test_a_bad_study_file_fails_before_any_job(tmp_path, demo_data):
    (tmp_path / "study.yaml").write_text(
        "study: {output: out}\ndata: {data: data}\nlora: {model: tiny, epoch: 3}\nclassify: {folds: 1}\n")
    res = snakemake(tmp_path, "--cores", "1")
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert any("lora.epoch: unknown key" in e for e in errors), res.stderr
    assert any("classify.folds: 1 must be at least 2" in e for e in errors), res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_data_folder_is_one_line(tmp_path):
    (tmp_path / "study.yaml").write_text("study: {output: out}\ndata: {data: nowhere}\nlora: {model: tiny}\n")
    res = snakemake(tmp_path, "--cores", "1", "-n")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "nowhere" in res.stderr and not (tmp_path / "out").exists()


def test_weights_none_is_not_silent(tmp_path, demo_data):
    write_study(tmp_path, demo_data)
    (tmp_path / "study.yaml").write_text(study_text().replace("weights: calibrated", "weights: none"))
    res = snakemake(tmp_path, "--cores", "1", "-n")
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {tmp_path / 'study.yaml'}: classify.weights is none: the classifier starts from random "
                        "weights, so every mix scores alike and the report means nothing; use imagenet (real runs) or "
                        "calibrated (offline smoke runs)"], warnings
    # The warning changes nothing else: the plan is the calibrated study's, less the stand-in weights job.
    assert job_counts(res.stdout + res.stderr) == {
        "tiny_model": 1, "split": 1, "lora": 6, "generate": 4, "synthetic_manifest": 1, "realism": 1,
        "publish_realism": 1, "cv": 1, "publish_report": 1, "all": 1}


# --------------------------------------------------------------------------- the whole study

def test_the_study_runs_end_to_end_with_every_job_at_its_grain(local_run):
    out = local_run / "out"
    log = (local_run / "stdout.txt").read_text()
    report = out / "report" / "report.html"
    assert f"report: {report}" in log
    assert report.is_file() and (out / "report" / "results.csv").is_file()
    md = (out / "report" / "report.md").read_text()
    assert "LoRA weight 1.0" in md and "LoRA weight 0.8" in md
    assert (out / "realism" / "realism.json").is_file()
    for k in (0, 1):
        for group in ("acceptable", "bad", "good"):
            assert (out / "lora" / f"fold_{k}" / group / "pytorch_lora_weights.safetensors").is_file()
        for w in ("w1.0", "w0.8"):
            assert any((out / "synthetic" / f"fold_{k}" / w).rglob("*.png"))
    assert json.loads((out / "folds.json").read_text())["n_splits"] == 2
    # GPU rules run through the slots: each LoRA job was pinned to one of the (fake) devices.
    lora_logs = sorted((out / "logs" / "lora").rglob("*.log"))
    assert len(lora_logs) == 6
    for path in lora_logs:
        assert re.search(r"gpu slots: CUDA_VISIBLE_DEVICES=[01]\b", path.read_text()), path


def test_snakemake_report_holds_the_cv_report_and_the_realism_table(local_run, tmp_path):
    target = tmp_path / "snakemake-report.zip"
    res = snakemake(local_run, "--report", str(target))
    assert res.returncode == 0, res.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(target).namelist()
    assert any(n.endswith("report/report.html") for n in names), names[:50]
    assert any(n.endswith("/realism.md") for n in names), names[:50]


def _change_image(path: Path) -> None:
    from PIL import Image

    im = Image.open(path)
    im.load()
    px = im.getpixel((0, 0))
    im.putpixel((0, 0), (px + 1) % 256 if isinstance(px, int) else tuple((c + 1) % 256 for c in px))
    im.save(path)


# rank: the LoRAs and everything after them; epochs (classify): the CV only; an image or the
# templates: all of it (an image changes the split and the calibrated weights too).
AFTER_LORA = {"lora": 6, "generate": 4, "synthetic_manifest": 1, "realism": 1, "publish_realism": 1, "cv": 1,
              "publish_report": 1, "all": 1}
CHANGES = {
    "nothing": (None, {}),
    "lora.rank": ("study", AFTER_LORA),
    "classify.epochs": ("study", {"cv": 1, "publish_report": 1, "all": 1}),
    "one data image": ("image", {"split": 1, "calibrate_weights": 1, **AFTER_LORA}),
    "templates": ("templates", AFTER_LORA),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_dry_run_lists_exactly_the_jobs_a_change_affects(local_run, change):
    what, expected = CHANGES[change]
    study, image = local_run / "study.yaml", sorted((local_run / "data").rglob("*.png"))[0]
    templates = local_run / "templates.yaml"
    saved = {p: p.read_bytes() for p in (study, image, templates)}
    try:
        if change == "lora.rank":
            study.write_text(study_text(rank=2))
        elif change == "classify.epochs":
            study.write_text(study_text(epochs=3))
        elif what == "image":
            _change_image(image)
        elif what == "templates":
            templates.write_text(templates.read_text() + "\n# a comment changes the file's content\n")
        res = snakemake(local_run, "--cores", "2", "-n")
        assert res.returncode == 0, res.stderr[-3000:]
        assert job_counts(res.stdout + res.stderr) == expected
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    # Restored content: nothing to do again (Snakemake compares checksums, not only times).
    again = snakemake(local_run, "--cores", "2", "-n")
    assert job_counts(again.stdout + again.stderr) == {}


# --------------------------------------------------------------------------- kill -9

def test_kill_9_during_a_lora_job_then_a_rerun_resumes_to_the_same_lora(local_run, tmp_path):
    from safetensors.torch import load_file

    target = "out/lora/fold_0/good"  # the workflow's outputs are absolute paths: so is the target
    folder = copy_without(local_run, tmp_path / "killed", target)  # its split and tiny model are up to date there
    # lora train's testing hook SIGKILLs the training process right after it checkpoints update 2.
    killed = snakemake(folder, "--cores", "1", str(folder / target), env={"LORA_KILL_AFTER_UPDATE": "2"})
    assert killed.returncode != 0
    assert not (folder / target).exists()
    assert list((folder / "out" / "lora" / ".work" / "fold_0" / "good").rglob("checkpoint-2"))

    again = snakemake(folder, "--cores", "1", str(folder / target))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing from" in (folder / "out" / "logs" / "lora" / "fold_0" / "good.log").read_text()
    mine = load_file(folder / target / "pytorch_lora_weights.safetensors")
    reference = load_file(local_run / target / "pytorch_lora_weights.safetensors")
    assert mine.keys() == reference.keys()
    for key in reference:
        assert (mine[key] == reference[key]).all(), key


# --------------------------------------------------------------------------- GPU slots

SLOT_SNAKEFILE = """\
import sys
RECORD = ("import json, os, sys, time; t0 = time.time(); time.sleep(1.5); "
          "json.dump([os.environ.get('CUDA_VISIBLE_DEVICES'), t0, time.time()], open(sys.argv[1], 'w'))")
CMD = f"{sys.executable} -m prompts.slots -- {sys.executable} -c \\"{RECORD}\\" {{output}}"

rule all:
    input:
        expand("o/{i}.json", i=range(6)),

rule job:
    output:
        "o/{i}.json",
    resources:
        gpu=1,
    shell:
        CMD
"""


def _run_slot_workflow(tmp_path: Path, gpus: str, resources: int) -> list[tuple[str, float, float]]:
    (tmp_path / "Snakefile").write_text(SLOT_SNAKEFILE)
    env = dict(os.environ, CELLSYNTH_GPUS=gpus, PYTHONPATH=str(ROOT))
    res = subprocess.run([str(SNAKEMAKE), "--cores", "6", "--resources", f"gpu={resources}", "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [tuple(json.loads(p.read_text())) for p in sorted((tmp_path / "o").glob("*.json"))]


def _overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_gpu_slots_give_k_concurrent_jobs_k_distinct_devices(tmp_path):
    runs = _run_slot_workflow(tmp_path, "0,1,2", resources=3)
    assert {r[0] for r in runs} == {"0", "1", "2"}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            assert not (a[0] == b[0] and _overlap(a, b)), (a, b)  # never two jobs on one GPU at once
    assert any(_overlap(a, b) for i, a in enumerate(runs) for b in runs[i + 1:])  # they did run side by side


def test_gpu_slots_make_extra_jobs_wait_for_a_free_device(tmp_path):
    # Snakemake lets 6 GPU jobs start (gpu=6) but there are 2 devices: the slots queue the rest.
    runs = _run_slot_workflow(tmp_path, "5,7", resources=6)
    assert {r[0] for r in runs} == {"5", "7"}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            assert not (a[0] == b[0] and _overlap(a, b)), (a, b)


def test_a_killed_job_frees_its_gpu_slot(tmp_path):
    from prompts.slots import acquire

    env = dict(os.environ, CELLSYNTH_GPUS="3", PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-m", "prompts.slots", "--dir", str(tmp_path), "--", "sleep", "60"],
                              env=env, stderr=subprocess.PIPE, text=True)
    assert "CUDA_VISIBLE_DEVICES=3" in holder.stderr.readline()
    with pytest.raises(BlockingIOError):
        import fcntl

        fd = os.open(tmp_path / "gpu-3.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.time()
    dev, fd = acquire(["3"], tmp_path, poll_s=0.05)
    os.close(fd)
    assert dev == "3" and time.time() - t0 < 2


def test_gpu_devices_come_from_the_environment():
    from prompts.slots import devices

    assert devices({"CELLSYNTH_GPUS": "0, 2"}) == ["0", "2"]
    assert devices({"CELLSYNTH_GPUS": ""}) == []
    assert devices({"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert devices({"SLURM_JOB_ID": "12", "CELLSYNTH_GPUS": "0,1"}) == []  # SLURM pins GPUs itself


# --------------------------------------------------------------------------- example study files

@pytest.mark.parametrize("config", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_example_study_files_validate(config):
    from prompts.config import validate_study_file

    assert validate_study_file(config) == []
