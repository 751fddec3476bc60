"""The workflow on a real SLURM: a one-node cluster on this machine (the session's `slurm_cluster`) runs the small
study of tests/studies.py through snakemake-executor-plugin-slurm and the SLURM profile (the session's `second_run`);
its results must equal the local run's. Skips (with the reason) only where SLURM cannot be installed or started.
"""
from __future__ import annotations

import re

import yaml

from .studies import GPU_RULES, PROFILE, SNAKEFILE

# The rules files of every task (segmentation.smk) and the search: the profile sizes them all.
ALL_GPU_RULES = GPU_RULES + ("controlnet", "pairs", "seg_realism", "seg_cv", "search_worker", "search_report", "pheno_lora",
                             "pheno_generate", "pheno_segment")


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


def test_the_study_on_slurm_gives_the_local_report(slurm_cluster, second_run, local_run):
    """The session's second run of the small study is the SLURM one (tests/conftest.py `second_run`): every rule was
    a SLURM job, and its folds and results equal the local run's (tests/test_reproducible.py compares every file)."""
    assert second_run.executor == "slurm", second_run.why_local
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid \d+ \(log: .*?/rule_(\w+)/", second_run.log)
    assert sorted(set(submitted)) == sorted(["tiny_model", "split", "calibrate_weights", "lora", "generate", "synthetic_manifest",
                                             "realism", "cv"])
    assert submitted.count("lora") == 6 and submitted.count("generate") == 4
    out, ref = second_run.folder / "out", local_run / "out"
    assert (out / "folds.json").read_text().replace(str(second_run.folder), "") == \
        (ref / "folds.json").read_text().replace(str(local_run), "")
    assert (out / "report" / "results.csv").read_bytes() == (ref / "report" / "results.csv").read_bytes()
    assert (out / "report" / "report.html").is_file()
