"""The workflow with `lora.together`: one LoRA job per chunk of a fold's groups (dry runs of the small study), and a bad
value in one line. A whole study run with it: tests/test_search_workflow.py."""
from __future__ import annotations

import pytest

from .test_workflow import job_counts, snakemake, study_text, write_study

pytestmark = pytest.mark.workflow


def together_study(tmp_path, demo_data, together: str):
    folder = write_study(tmp_path, demo_data)
    (folder / "study.yaml").write_text(study_text().replace("checkpointing_steps: 1}", f"checkpointing_steps: 1, together: {together}}}"))
    return folder


@pytest.mark.parametrize(("together", "jobs"), [("all", {"lora_together_0": 2}),
                                                ("2", {"lora_together_0": 2, "lora_together_1": 2}),
                                                ("1", {"lora": 6})])
def test_a_dry_run_lists_one_lora_job_per_chunk_and_fold(tmp_path, demo_data, together, jobs):
    folder = together_study(tmp_path, demo_data, together)
    res = snakemake(folder, "--cores", "1", "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert {k: v for k, v in counts.items() if k.startswith("lora")} == jobs


def test_a_bad_together_value_is_one_line(tmp_path, demo_data):
    folder = together_study(tmp_path, demo_data, "many")
    res = snakemake(folder, "--cores", "1", "-n")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "lora.together: 'many'" in res.stderr
    assert not (folder / "out" / "lora").exists()


# The joint job's outputs in a whole study (each group's folder written and sealed, its log, nothing left to do):
# tests/test_search_workflow.py, whose default and best studies train with `lora.together: all`.
