"""The phenotyping study through Snakemake (`study.task: phenotyping`): end to end, every regime, both classifiers.

Data: the task registry's smoke example (study/tasks.py): numpy-drawn cells of two types that differ clearly
in size and brightness (small bright, large dim), one monoculture image per type and four co-culture images
with exact masks and types. The study runs every regime (zero-shot, retrained with k = 1 and 2, co-only)
with the reference method and the cnn on its tiny stand-in (`weights: calibrated`, 32 px), once per module;
the checks then read its outputs and dry runs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT
from .studies import study_run

pytest.importorskip("snakemake")
pytest.importorskip("tensorflow")

pytestmark = pytest.mark.workflow

REGIMES = ["zero-shot", "retrained-k1", "retrained-k2", "co-only"]
# Zero-shot from monocultures, reference method, on types this different: the proportion of each type per
# image is within this many percentage points of the truth on average over the folds.
ZERO_SHOT_TOLERANCE_PP = 5.0


def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from the 'Job stats' table of a dry run ({} when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", output, re.S)
    assert m, output[-3000:]
    return {name: int(n) for name, n in (line.split() for line in m.group(1).strip().splitlines())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The registry's example with every regime and both classifiers, run to the end."""
    from study import tasks

    folder = tmp_path_factory.mktemp("pheno-study")
    tasks.get("phenotyping").example(folder)
    study = yaml.safe_load((folder / "study.yaml").read_text())
    study["phenotype"].update(regimes=["zero-shot", "retrained", "co-only"], k=[1, 2], models=["reference", "cnn"],
                              weights="calibrated", cnn_size=32, epochs=2, batch_size=16)
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    res = study_run(folder, "--cores", "2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return folder


def results(folder: Path) -> dict:
    return json.loads(folder.joinpath("results.json").read_text())


def fold_values(res: dict, model: str, regime: str, metric: str) -> list[float]:
    return [r["metrics"][metric] for r in res["runs"] if r["model"] == model and r["regime"] == regime]


def test_every_regime_runs_and_the_report_is_published_and_sealed(finished):
    out = finished / "out"
    report = out / "report"
    assert (report / "report.html").is_file() and (report / "report.md").is_file()
    assert (out / ".report.sha256").is_file()
    res = results(report)
    assert res["regimes"] == REGIMES and res["models"] == ["reference", "cnn"]
    assert {(r["model"], r["regime"]) for r in res["runs"]} == {(m, g) for m in res["models"] for g in REGIMES}
    assert len(res["comparisons"]) == 2 * (len(REGIMES) - 1)  # every regime against zero-shot, per classifier
    text = (report / "report.md").read_text()
    assert text.startswith("# Phenotyping and counting report") and "zero-shot counts" in text.split("##")[0]
    for regime in REGIMES:
        assert (out / "regimes" / regime / "results.json").is_file()
        assert (out / "regimes" / f".{regime}.sha256").is_file()


def test_each_regime_alone_gives_the_reports_numbers_and_the_features_are_computed_once(finished):
    """The report runs every regime again on the cached features in the same folds: the reference method's
    numbers per fold equal each regime's own run; only the baseline's folder holds a feature cache."""
    out = finished / "out"
    combined = results(out / "report")
    for regime in REGIMES:
        alone = results(out / "regimes" / regime)
        assert alone["regimes"] == [regime]
        for metric in ("proportion_error", "count_mae", "balanced_accuracy"):
            assert fold_values(alone, "reference", regime, metric) == fold_values(combined, "reference", regime, metric), (regime, metric)
    caches = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("*.npz"))
    assert caches and set(caches) == {"regimes/zero-shot/cache"}, caches


def test_zero_shot_counts_clearly_different_types_within_the_stated_tolerance(finished):
    res = results(finished / "out" / "report")
    errors = fold_values(res, "reference", "zero-shot", "proportion_error")
    assert len(errors) == 2 and sum(errors) / len(errors) <= ZERO_SHOT_TOLERANCE_PP, errors


def test_a_finished_study_has_nothing_to_do(finished):
    res = study_run(finished, "-n")
    assert res.returncode == 0 and job_counts(res.stdout + res.stderr) == {}, res.stdout[-3000:] + res.stderr[-3000:]


def test_a_changed_setting_reruns_what_reads_it_and_a_dropped_regime_only_the_report(finished):
    # a classifier setting: every regime and the report; the dry run's reason names the key
    res = study_run(finished, "-n", "--config", 'phenotype={"trees": 30}')
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts.get("pheno_regime") == len(REGIMES) and counts.get("pheno_cv") == 1, counts
    assert "phenotype.trees" in res.stdout
    # one regime fewer: no regime is re-run; its folder is moved aside, the report made again
    res = study_run(finished, "-n", "--config", 'phenotype={"k": [1]}')
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert "pheno_regime" not in counts and counts.get("pheno_cv") == 1, counts
    assert "would move aside" in res.stderr and "retrained-k2" in res.stderr, res.stderr[-3000:]


def test_a_bad_baseline_is_one_line_before_any_job(tmp_path):
    from study import tasks

    tasks.get("phenotyping").example(tmp_path)
    res = study_run(tmp_path, "-n", "--config", 'phenotype={"baseline": "retrained-k7"}')
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == 2 and len(lines) == 1 and "phenotype.baseline retrained-k7" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_the_slurm_profile_sizes_every_phenotyping_rule():
    """Each rule of phenotyping.smk has its SLURM size and threads; only the synthetic regime's LoRA and generation
    jobs and the per-fold segmentation model ask for a GPU (the others are CPU jobs)."""
    text = (ROOT / "workflow" / "rules" / "phenotyping.smk").read_text()
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    rules = re.findall(r"^\s*rule (\w+):", text, re.M)
    assert rules == ["pheno_regime", "pheno_cv", "pheno_segment", "pheno_crops", "pheno_lora", "pheno_generate"]
    gpu = {"pheno_segment", "pheno_lora", "pheno_generate"}
    for name in rules:
        size = profile["set-resources"][name]
        assert size["mem_mb"] > 0 and size["runtime"] > 0 and ("gpu" in size) == (name in gpu), name
        assert profile["set-threads"][name] >= 1, name
    assert text.count("gpu=1") == len(gpu)
