"""Every benchmark still runs: `--help` of each `bench` module, and its one-step `--smoke` mode.

A renamed import or argument (e.g. `generate.plan.Job` -> `ImageJob`) breaks a benchmark only when it is
run, often months later on a lent GPU; this catches it in the test suite. The smoke modes use tiny models,
a few pixels and one step: they check that the script runs, not how fast (no figure is checked or written).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT
from .helpers import run_command

# unit tier by default (tests/conftest.py); the slow test below marks itself workflow

MODULES = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
# Benchmarks whose smoke run needs a process of its own: bench_b7 measures Keras on its torch backend, and Keras
# fixes its backend once per process (the other rooms' Keras runs on TensorFlow).
OWN_PROCESS = {"bench_b7"}


def test_every_benchmark_can_be_asked_for_by_name():
    from bench.__main__ import ROOMS

    assert sorted(f"bench_{r}" for r in ROOMS) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    res = run_command(f"bench.{module}", "--help")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--smoke" in res.stdout


@pytest.mark.workflow  # a whole (tiny) benchmark run each, minutes on 2 cores: not the inner loop
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("module", MODULES)
def test_smoke(module):
    """In this process (tests.helpers.run_command), so torch, diffusers and TensorFlow are imported once for all, except
    where a benchmark makes a process-wide choice (OWN_PROCESS)."""
    before = {p.name: p.stat().st_mtime_ns for p in (ROOT / "bench").glob("*.md")}
    if module in OWN_PROCESS:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}
        res = subprocess.run([sys.executable, "-m", f"bench.{module}", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=1200)
    else:
        res = run_command(f"bench.{module}", "--smoke")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (ROOT / "bench").glob("*.md")}
    assert after == before, "a smoke run must not rewrite the benchmark pages"
