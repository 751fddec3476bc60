"""The workflow with `lora.together`: one LoRA job per chunk of a fold's groups, each group's folder sealed as before."""
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


def test_a_joint_job_writes_and_seals_every_group_folder(tmp_path, demo_data):
    from study.outputs import is_intact

    folder = together_study(tmp_path, demo_data, "all")
    out = folder / "out" / "lora" / "fold_0"
    targets = [str(out / f".{g}.sha256") for g in ("acceptable", "bad", "good")]
    res = snakemake(folder, "--cores", "1", *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    for group in ("acceptable", "bad", "good"):
        assert (out / group / "pytorch_lora_weights.safetensors").is_file() and (out / f".{group}.sha256").is_file()
        assert is_intact(out / group)
    assert (folder / "out" / "logs" / "lora" / "fold_0" / "together_0.log").is_file()
    again = snakemake(folder, "--cores", "1", "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
