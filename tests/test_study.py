"""The whole study (examples/quickstart/study.sh) at a smaller size, and the example configs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prompts.config import load_study

from .conftest import ROOT

STUDY = ROOT / "examples" / "quickstart" / "study.sh"
SMALL = """
lora: {per: class, fold: all, repeats: 1, epochs: 1, batch_size: 2, resolution: 64, rank: 4, alpha: 4.0, validation_images: 0}
generate: {fold: all, steps: 4, size: [64, 64], batch_size: 8, lora_weights: [1.0, 0.8], fraction: [0.5, 1.0], seed: 0}
classify: {folds: 3, group_by: "regex:^\\\\d{8}", backbone: EfficientNetB0, weights: none, image_size: 32,
           epochs: 3, augment: false, mixes: [real, real+50, real+100, synthetic, balance]}
"""


@pytest.mark.parametrize("config", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_example_configs_validate(config):
    study = load_study(config)
    assert study.lora.epochs >= 1 and study.classify.folds >= 2


def _env():
    env = dict(os.environ, DEMO_IMAGES="36", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("DATA", None)
    env.pop("MODEL", None)
    return env


def test_demo_study_runs_resumes_and_reports_every_mix(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    out = tmp_path / "study"
    cmd = ["bash", str(STUDY), str(out), str(config)]
    # Start the study and kill it once the split is done and the LoRA stage is under way.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / ".done" / "split").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / ".done" / "split").exists(), proc.communicate()[0][-3000:]
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    split_mtime = (out / "folds.json").stat().st_mtime
    assert not (out / ".done" / "lora").exists()

    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("data", "model", "weights", "split"):
        assert f"== {stage}: done before, skipped" in done.stdout
    assert (out / "folds.json").stat().st_mtime == split_mtime
    report = out / "report" / "report.html"
    assert done.stdout.strip().splitlines()[-1] == f"report: {report}"
    assert report.is_file() and (out / "report" / "results.csv").is_file()
    md = (out / "report" / "report.md").read_text()
    for mix in ("real", "real+50", "real+100", "synthetic", "balance"):
        assert f"| {mix} " in md or f"| **{mix}" in md or f"|{mix}|" in md, mix
    assert "## LoRA weight 1.0" in md and "## LoRA weight 0.8" in md
    # Per-fold LoRAs and per-fold synthetic trees exist: the leakage-free protocol.
    for k in range(3):
        assert (out / "lora" / f"fold_{k}" / "good" / "pytorch_lora_weights.safetensors").is_file()
        assert (out / "synthetic" / f"fold_{k}" / "w0.8" / "A549").is_dir() or (out / "synthetic" / f"fold_{k}" / "w0.8").is_dir()

    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 8
