"""The workflow on a real SLURM: a one-node cluster on this machine runs the small study of
tests/test_workflow.py through snakemake-executor-plugin-slurm and the SLURM profile; its results
must equal the local run's. Skips (with the reason) only where SLURM cannot be installed or started.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest
import yaml

from .conftest import ROOT
from .test_workflow import SNAKEFILE, local_study, snakemake

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import local_slurm  # noqa: E402

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
GPU_RULES = ("lora", "generate", "realism", "cv")
# The rules files of every task (segmentation.smk) and the search: the profile sizes them all.
ALL_GPU_RULES = GPU_RULES + ("controlnet", "pairs", "seg_realism", "seg_cv", "search_worker", "search_report", "pheno_lora",
                             "pheno_generate", "pheno_segment")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """munged, slurmctld and slurmd for a one-node cluster; stopped (by pid) afterwards."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[study]')")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        env = local_slurm.start(folder, cpus=2, memory_mb=6000)
    except local_slurm.SlurmUnavailable as err:
        pytest.skip(f"no SLURM here: {err}")
    try:
        yield env
    finally:
        local_slurm.stop(folder)


def test_the_slurm_profile_sizes_every_rule_of_the_workflow():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    text = SNAKEFILE.read_text() + "".join(p.read_text() for p in sorted((SNAKEFILE.parent / "rules").glob("*.smk")))
    rules = set(re.findall(r"^\s*rule (\w+):", text, re.M)) - {"all"}
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) == rules
    for rule, res in profile["set-resources"].items():
        assert res["mem_mb"] > 0 and res["runtime"] > 0, rule
        assert res.get("gpu", 0) == (1 if rule in ALL_GPU_RULES else 0), rule
    assert set(profile["set-threads"]) <= rules


def test_the_study_on_slurm_gives_the_local_report(slurm_cluster, tmp_path_factory, demo_data, tmp_path):
    local = local_study(tmp_path_factory, demo_data)
    folder = tmp_path / "on-slurm"
    folder.mkdir()
    for name in ("study.yaml", "templates.yaml"):
        shutil.copy(local / name, folder / name)
    shutil.copytree(local / "data", folder / "data")
    # The profile as written, with this node's sizes: no GPU, 6 GB, 2 CPUs.
    small = [f"{rule}:mem_mb=1500" for rule in ("tiny_model", "split", "calibrate_weights", "lora", "generate", "synthetic_manifest")]
    small += [f"{rule}:gpu=0" for rule in GPU_RULES] + ["realism:mem_mb=2500", "cv:mem_mb=2500"]
    res = snakemake(
        folder, "--profile", str(PROFILE), "--jobs", "4", "--slurm-status-command", "squeue", "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "10",
        "--set-resources", *small, "--set-threads", "lora=1", "generate=1", "realism=2", "cv=2", "calibrate_weights=2",
        env=slurm_cluster, timeout=2400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    log = res.stdout + res.stderr
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid \d+ \(log: .*?/rule_(\w+)/", log)
    assert sorted(set(submitted)) == sorted(["tiny_model", "split", "calibrate_weights", "lora", "generate", "synthetic_manifest",
                                             "realism", "cv"])
    assert submitted.count("lora") == 6 and submitted.count("generate") == 4
    out, ref = folder / "out", local / "out"
    assert (out / "folds.json").read_text().replace(str(folder), "") == (ref / "folds.json").read_text().replace(str(local), "")
    assert (out / "report" / "results.csv").read_bytes() == (ref / "report" / "results.csv").read_bytes()
    assert (out / "report" / "report.html").is_file()
