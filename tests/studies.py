"""The small whole studies the workflow tests share: one study file, one way to run Snakemake, one copy rule.

`local_study` runs the classification study once per session (the `local_run` fixture of
tests/conftest.py); tests that only read it use it as it is, tests that change it work on
`copy_study`, a copy whose large files are hard links.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# No seed anywhere: the defaults make it reproducible (tests/test_reproducible.py runs it a second time).
STUDY = """\
study: {{output: out}}
data: {{data: data, templates: templates.yaml}}
lora: {{model: tiny, per: class, repeats: 1, epochs: 1, batch_size: 2, resolution: 64, rank: {rank}, alpha: 4.0,
       validation_images: 0, checkpointing_steps: 1}}
generate: {{steps: 2, size: [32, 32], batch_size: 8, lora_weights: [1.0, 0.8], fraction: [0.5]}}
classify: {{folds: 2, group_by: "regex:^\\\\d{{8}}", backbone: EfficientNetB0, weights: calibrated, image_size: 32,
           epochs: {epochs}, augment: false, mixes: [real, real+50]}}
"""
GPUS = "0,1"  # fake device ids: the local run goes through the GPU slots (no effect on a CPU)

# Files a copy may share with the original by a hard link: written once, atomically (a new file is
# renamed over the old one, never rewritten in place), and never a Snakemake output of their own
# (`snakemake --touch` changes the times of outputs, and a link would carry that to the original).
LINKABLE_SUFFIXES = {".png", ".safetensors", ".npy", ".npz", ".tif", ".tiff", ".jpg", ".jpeg"}


def study_text(rank: int = 4, epochs: int = 2) -> str:
    """The study file of the small classification study, with the two settings the re-run tests change."""
    return STUDY.format(rank=rank, epochs=epochs)


def snakemake(folder: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`snakemake -s workflow/Snakefile --configfile study.yaml ARGS` in `folder` (its working directory)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "study.yaml", *args]
    return subprocess.run(cmd, cwd=folder, env=full_env, capture_output=True, text=True, timeout=timeout)


def write_study(folder: Path, data: Path) -> Path:
    """A study folder: study.yaml, a copy of the data and of the default templates."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data, folder / "data", dirs_exist_ok=True)
    shutil.copy(ROOT / "prompts" / "default_templates.yaml", folder / "templates.yaml")
    (folder / "study.yaml").write_text(study_text())
    return folder


def run_local(folder: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The small study in `folder` as the session's local run runs it: 2 cores through two (fake) GPU slots."""
    return snakemake(folder, "--cores", "2", "--resources", "gpu=2", env={"CELLSYNTH_GPUS": GPUS, **(env or {})})


def local_study(tmp_path_factory, demo_data: Path) -> Path:
    """The small study run once per session with `--cores 2` (a finished run is reused)."""
    folder = tmp_path_factory.getbasetemp() / "workflow-local"
    if (folder / "done").is_file():
        return folder
    write_study(folder, demo_data)
    res = run_local(folder)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    (folder / "stdout.txt").write_text(res.stdout + res.stderr)
    (folder / "done").write_text("")
    return folder


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link a large write-once output, copy everything else (times kept either way)."""
    path = Path(src)
    if path.suffix.lower() in LINKABLE_SUFFIXES and ".snakemake" not in path.parts and "data" not in path.parts:
        try:
            os.link(src, dst)
            return dst
        except OSError:  # another file system, or links not allowed: a copy does the same
            pass
    return shutil.copy2(src, dst)


def copy_study(src: Path, dst: Path) -> Path:
    """A copy of a finished study folder (times kept, so its outputs are up to date there too).

    Large outputs (LoRA weights, synthetic images) are hard links where the file system allows:
    the toolkit replaces a file by renaming a new one over it, so a test that re-runs a job in the
    copy never writes through a link into the original. The data, the study files, Snakemake's
    records and every file that is itself a Snakemake output are copied.
    """
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    return dst


def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from the 'Job stats' table of a dry run ({} when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", output, re.S)
    assert m, output[-3000:]
    return {name: int(n) for name, n in (line.split() for line in m.group(1).strip().splitlines())}
