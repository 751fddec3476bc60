"""`python -m study.run` refuses a study whose `data.channels` the lab files do not have, before Snakemake runs
a job: the check's one line, exit status 2, no output folder (the workflow tier: a real subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT
from .test_check_channels import lab_folder, study_file

pytestmark = pytest.mark.workflow

pytest.importorskip("tifffile")
pytest.importorskip("bioio")


def test_study_run_refuses_an_unknown_channel_before_any_job(tmp_path):
    data = lab_folder(tmp_path / "data")
    study = study_file(tmp_path, data, ", channels: [NOPE]")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "study.run", "--cores", "1", "--configfile", str(study)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "a/a0.ome.tif: data.channels has no channel named 'NOPE' (channels DAPI, GFP, RFP" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".snakemake").exists()


def test_bare_snakemake_gives_the_same_line_before_any_job(tmp_path):
    """The Snakefile runs the same check on Snakemake's merged config: the identical line, exit 2."""
    pytest.importorskip("snakemake")
    from .test_workflow import snakemake

    data = lab_folder(tmp_path / "data")
    study_file(tmp_path, data, ", z: 9")
    flow = snakemake(tmp_path, "--cores", "1")
    lines = [line for line in flow.stderr.splitlines() if line.startswith("error: ")]
    assert flow.returncode == 2 and "Traceback" not in flow.stderr, flow.stderr[-2000:]
    assert len(lines) == 1 and "a/a0.ome.tif: data.z 9 is out of range" in lines[0], flow.stderr[-2000:]
    assert not (tmp_path / "out").exists()
