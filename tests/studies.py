"""The small whole studies the workflow tests share: one study file, one way to run Snakemake, one copy rule.

`local_study` runs the classification study once per session (the `local_run` fixture of
tests/conftest.py); tests that only read it use it as it is, tests that change it work on
`copy_study`, a copy whose large files are hard links.
"""
from __future__ import annotations

import dataclasses
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


def study_run(folder: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`python -m study.run ARGS --configfile study.yaml` in `folder` (what `make study` runs); jobs import this tree."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "study.run", *args, "--configfile", "study.yaml"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)


def study_text(rank: int = 4, epochs: int = 2) -> str:
    """The study file of the small classification study, with the two settings the re-run tests change."""
    return STUDY.format(rank=rank, epochs=epochs)


def snakemake_command(folder: Path, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """The command line and environment of `snakemake -s workflow/Snakefile --configfile study.yaml ARGS`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    return [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--configfile", "study.yaml", *args], full_env


def snakemake(folder: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`snakemake -s workflow/Snakefile --configfile study.yaml ARGS` in `folder` (its working directory)."""
    cmd, full_env = snakemake_command(folder, *args, env=env)
    return subprocess.run(cmd, cwd=folder, env=full_env, capture_output=True, text=True, timeout=timeout)


def write_study(folder: Path, data: Path) -> Path:
    """A study folder: study.yaml, a copy of the data and of the default templates."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data, folder / "data", dirs_exist_ok=True)
    shutil.copy(ROOT / "prompts" / "default_templates.yaml", folder / "templates.yaml")
    (folder / "study.yaml").write_text(study_text())
    return folder


# How the session's studies run locally: 2 cores through two (fake) GPU slots.
LOCAL_ARGS = ("--cores", "2", "--resources", "gpu=2")
LOCAL_ENV = {"CELLSYNTH_GPUS": GPUS}


def run_local(folder: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The small study in `folder` as the session's local run runs it (`LOCAL_ARGS`, `LOCAL_ENV`)."""
    return snakemake(folder, *LOCAL_ARGS, env={**LOCAL_ENV, **(env or {})})


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


PROFILE = ROOT / "workflow" / "profiles" / "slurm"
GPU_RULES = ("lora", "generate", "realism", "cv")


# The SLURM profile as written, on the one-node test cluster: no account, states read with squeue, polled every second
# at first (Snakemake's default is 10 s; the plugin adds 10 s after each check that finds no job finished).
SLURM_FLAGS = ("--profile", str(PROFILE), "--jobs", "4", "--slurm-status-command", "squeue", "--slurm-no-account",
               "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1", "--latency-wait", "10")


def slurm_args() -> list[str]:
    """Snakemake's flags for the study through the SLURM profile (`SLURM_FLAGS`), sized for the one-node test cluster
    (no GPU, 6 GB, 2 CPUs) with the threads each rule gets in `run_local` (so the two runs compute alike)."""
    small = [f"{rule}:mem_mb=1500" for rule in ("tiny_model", "split", "calibrate_weights", "lora", "generate", "synthetic_manifest")]
    small += [f"{rule}:gpu=0" for rule in GPU_RULES] + ["realism:mem_mb=2500", "cv:mem_mb=2500"]
    return [*SLURM_FLAGS, "--set-resources", *small, "--set-threads", "lora=1", "generate=1", "realism=2", "cv=2", "calibrate_weights=2"]


@dataclasses.dataclass
class Background:
    """A Snakemake run started in the background (`start_snakemake`); its log is a file beside its folder (a pipe
    nobody reads would fill and stop it)."""

    process: subprocess.Popen
    log_file: Path

    def wait(self, timeout: float = 2400) -> str:
        """Its log, once it has finished with success."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        log = self.log_file.read_text()
        assert code == 0, log[-8000:]
        return log

    def stop(self) -> None:
        """Kill it if it still runs (a session whose reader failed or was never reached)."""
        if self.process.poll() is None:
            self.process.kill()


def start_snakemake(folder: Path, *args: str, env: dict | None = None) -> Background:
    """`snakemake ... ARGS` in `folder` (as `snakemake`), started in the background."""
    cmd, full_env = snakemake_command(folder, *args, env=env)
    log_file = folder.with_name(folder.name + ".log")
    with open(log_file, "w") as log:
        process = subprocess.Popen(cmd, cwd=folder, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return Background(process, log_file)


@dataclasses.dataclass
class SecondRun:
    """The small study's second run: its folder, where it ran ("slurm" or "local"), why not on SLURM, its log."""

    folder: Path
    executor: str
    why_local: str
    log: str


@dataclasses.dataclass
class StartedRun:
    """The second run, started in the background (`start_second`): `wait()` gives its `SecondRun`."""

    folder: Path
    executor: str
    why_local: str
    run: Background

    def wait(self, timeout: float = 2400) -> SecondRun:
        return SecondRun(self.folder, self.executor, self.why_local, self.run.wait(timeout))


def start_second(folder: Path, local: Path, slurm_env: dict | None, why_local: str = "") -> StartedRun:
    """The study of `local` (its study file, templates and data) started again in `folder` with PYTHONHASHSEED=random,
    in the background: on SLURM when `slurm_env` is given, else as `run_local`."""
    folder.mkdir(parents=True)
    for name in ("study.yaml", "templates.yaml"):
        shutil.copy(local / name, folder / name)
    shutil.copytree(local / "data", folder / "data")
    hash_seed = {"PYTHONHASHSEED": "random"}
    if slurm_env is not None:
        run = start_snakemake(folder, *slurm_args(), env={**slurm_env, **hash_seed})
    else:
        run = start_snakemake(folder, *LOCAL_ARGS, env={**LOCAL_ENV, **hash_seed})
    return StartedRun(folder, "slurm" if slurm_env is not None else "local", why_local, run)


SEG_STUDY = """\
study: {{output: out, task: segmentation}}
data: {{data: data}}
controlnet: {{model: tiny, resolution: 64, batch_size: 2, epochs: 1, learning_rate: 0.001, count: 2, densities: [3.0],
             steps: {steps}, size: 64}}
segment: {{folds: 2, weights: tiny, image_size: 64, epochs: {epochs}, batch_size: 4, mixes: [real, real+50], overlays: 1}}
"""


def write_seg_pairs(data: Path) -> Path:
    """4 blob scenes, and 4 pbc3 images with thresholded masks when the shared data is there (64 px)."""
    from prompts.blobs import make_blob_pairs, write_threshold_pairs

    from .conftest import SHARED_DATA

    make_blob_pairs(data, n=4, size=64, seed=0)
    pbc3 = SHARED_DATA / "pbc3"
    if pbc3.is_dir():
        images = sorted((pbc3 / "neutrophil").glob("*.jpg"))[:2] + sorted((pbc3 / "lymphocyte").glob("*.jpg"))[:2]
        write_threshold_pairs(images, data, size=64)
    return data


def write_seg_study(folder: Path, steps: int = 2, epochs: int = 2) -> None:
    """The small segmentation study's study.yaml, with the two settings the re-run tests change."""
    (folder / "study.yaml").write_text(SEG_STUDY.format(steps=steps, epochs=epochs))


def segmentation_study(folder: Path) -> Path:
    """The small segmentation study (blob scenes, real pbc3 pairs when present) run in `folder` through the GPU slots
    (a finished run is reused)."""
    if (folder / "done").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_seg_pairs(folder / "data")
    write_seg_study(folder)
    res = snakemake(folder, *LOCAL_ARGS, env=LOCAL_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
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


def copy_without(src: Path, dst: Path, output: str, log: str | None = None) -> Path:
    """A copy of a finished study (`copy_study`) without one folder output and its seal (e.g. `out/lora/fold_0/good`),
    and its job's log when given (a test that waits for the job to start waits for it): its inputs are up to date
    there, so a run of that target runs that one job."""
    from prompts.layout import seal_file

    copy_study(src, dst)
    shutil.rmtree(dst / output)
    seal_file(dst / output).unlink()
    if log is not None:
        (dst / log).unlink()
    return dst


def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from the 'Job stats' table of a dry run ({} when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", output, re.S)
    assert m, output[-3000:]
    return {name: int(n) for name, n in (line.split() for line in m.group(1).strip().splitlines())}
