"""Promise: a killed run is re-run (issue 9), across the three long commands.

Each case starts the real command in a subprocess, waits until it has written part of its result
(polling its output folder), kills it with SIGKILL (no handler runs, no clean-up), then runs the SAME
command again (no extra flag) and compares the finished result with an uninterrupted run of the same
settings:

| command | killed when | compared with the uninterrupted run |
| --- | --- | --- |
| `lora train` | a complete `checkpoint-*` of the 1st group exists; then the re-run, in the 2nd group | both LoRA files, tensor for tensor, and their headers (bit-identical); loss log; the finished 1st group is kept |
| `generate` | 3 PNGs exist | the same PNG names, pixel-identical; every PNG decodes; one manifest line per image |
| `classify cv` | the first feature-cache shard exists | results.json metrics and every run's predictions; one report |

Each case also proves that the re-run continued (it did not quietly start over, which would pass
the comparison too), that no temporary file or folder is left, and that the data folder's checksums
are unchanged. 4 kills in all. Tiny model, 2 classes x 4 images at 32 px; only the killed runs are
subprocesses (the other runs are in this process to save start-ups), and every run uses one thread
so that in-process and subprocess runs compute the same bits.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT
from .helpers import tree_checksums

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

THREADS = {"CELLSYNTH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV = {**os.environ, **THREADS, "USE_TF": "0", "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
       "PYTHONPATH": str(ROOT)}
KILL_TIMEOUT_S = 300  # a loaded CI machine starts torch/TensorFlow slowly

# 4 images x 3 epochs / batch 2 = 6 updates per class, a checkpoint after each (the last one is the LoRA)
LORA_FLAGS = ["--resolution", "32", "--epochs", "3", "--repeats", "1", "--validation-images", "0",
              "--checkpointing-steps", "1", "--seed", "0"]
GENERATE_FLAGS = ["--count", "6", "--size", "32", "--steps", "2", "--seed", "0", "--lora-weights", "1.0", "0.8",
                  "--no-progress"]
# --batch-size 4: two cache shards per view, so a kill can fall between shards of one view
CV_FLAGS = ["--backbone", "EfficientNetB0", "--image-size", "32", "--weights", "none", "--epochs", "2", "--folds", "2",
            "--mixes", "real", "--batch-size", "4", "--no-progress"]


# --------------------------------------------------------------------------- helpers



def leftovers(out: Path, skip: str | None = None) -> list[str]:
    """Temporary names (a leading `.`: `.tmp*`, `.<name>.*`, `.*.partial`) under `out`, except the folder `skip`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel = Path(dirpath).relative_to(out)
        if skip in dirnames and rel == Path("."):
            dirnames.remove(skip)
        found += [str(rel / n) for n in dirnames + filenames if n.startswith(".")]
    return found


def in_process(main, argv) -> int:
    """A command's main() in this process (one thread, as the subprocesses): its exit status."""
    saved = {k: os.environ.get(k) for k in THREADS}
    os.environ.update(THREADS)
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(threads)
    return code or 0


def kill_when(module: str, argv, ready, log: Path) -> None:
    """Start `python -m module ARGV`, SIGKILL it as soon as ready() is true; fail if it ends first."""
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], cwd=ROOT, env=ENV,
                                stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + KILL_TIMEOUT_S
        try:
            while proc.poll() is None and not ready():
                if time.monotonic() > deadline:
                    pytest.fail(f"python -m {module} wrote nothing to wait for in {KILL_TIMEOUT_S} s:\n"
                                + log.read_text(errors="replace")[-3000:])
                time.sleep(0.02)
            ended = proc.poll()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert ended is None, (f"python -m {module} ended (status {ended}) before it could be killed:\n"
                           + log.read_text(errors="replace")[-3000:])
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/<class>/<image>: 2 classes x 4 grayscale 32x32 PNGs (this module's own, never written to)."""
    from prompts.demo import micrograph

    root = tmp_path_factory.mktemp("kills") / "data"
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            micrograph(label, "A549", 32, np.random.default_rng(10 + i)).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture
def unchanged(data):
    """Asserts after the test that the data folder's checksums are those of before."""
    before = tree_checksums(data)
    yield
    assert tree_checksums(data) == before


# --------------------------------------------------------------------------- 1. lora train

def lora_args(model, data, out) -> list:
    return ["train", "--model", model, "--data", data, "--output", out, *LORA_FLAGS]


@pytest.fixture(scope="module")
def lora_reference(tiny_model, data, tmp_path_factory) -> Path:
    """The uninterrupted `lora train`: OUT/good/, OUT/bad/ (also the LoRAs `generate` samples with)."""
    from lora.__main__ import main

    out = tmp_path_factory.mktemp("lora_ref") / "lora"
    assert in_process(main, lora_args(tiny_model, data, out)) == 0
    return out


def test_killed_lora_train_rerun_ends_bit_identical(tiny_model, data, lora_reference, tmp_path, caplog, unchanged):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lora.__main__ import main
    from prompts import layout

    def metadata(path: Path) -> dict:  # rank, alpha, ss_* training settings
        with safe_open(path, "pt") as f:
            return f.metadata() or {}

    out = tmp_path / "lora"
    work = out / ".work"
    first, second = "bad", "good"  # groups train in this order

    def checkpoint_of(group: str):  # train_state.json is written last into a checkpoint: it is complete
        return lambda: any(work.glob(f"{group}/checkpoints/checkpoint-*/train_state.json"))

    # kill 1: in the first group; kill 2: the re-run, in the second group (a resumed run killed again)
    kill_when("lora", lora_args(tiny_model, data, out), checkpoint_of(first), tmp_path / "killed1.log")
    assert not (out / first / layout.LORA_DIFFUSERS_FILE).exists(), "killed after the first LoRA was written: not mid-way"
    kill_when("lora", lora_args(tiny_model, data, out), checkpoint_of(second), tmp_path / "killed2.log")
    assert "continuing from" in (tmp_path / "killed2.log").read_text(), "the re-run started over"
    assert (out / first / layout.LORA_DIFFUSERS_FILE).exists()
    assert not (out / second / layout.LORA_DIFFUSERS_FILE).exists(), "killed after the second LoRA was written: not mid-way"
    done = {p.name: p.stat().st_mtime_ns for p in (out / first).iterdir()}

    with caplog.at_level("INFO", logger="lora"):
        assert in_process(main, lora_args(tiny_model, data, out)) == 0  # the same command, no --resume
    assert f"{second}: continuing from" in caplog.text, "the re-run started over"
    assert "finished already from the same inputs, kept" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (out / first).iterdir()} == done  # not trained or written again

    groups = (first, second)
    for g in groups:
        for name in (layout.LORA_DIFFUSERS_FILE, layout.lora_kohya_file(g)):
            want, got = load_file(lora_reference / g / name), load_file(out / g / name)
            assert want.keys() == got.keys(), name
            for key in want:
                assert torch.equal(want[key], got[key]), f"{g}/{name}: {key} differs from the uninterrupted run"
            assert metadata(lora_reference / g / name) == metadata(out / g / name), f"{g}/{name}: header metadata differs"
        assert (lora_reference / g / "loss.csv").read_text() == (out / g / "loss.csv").read_text()
    assert leftovers(out, skip=".work") == []
    assert not any(p.is_file() for p in work.rglob("*")), "checkpoints of finished groups are left in .work"


# --------------------------------------------------------------------------- 2. generate

def generate_args(model, loras, data, out) -> list:
    return ["--model", model, "--lora", loras, "--data", data, "--output", out, *GENERATE_FLAGS]


EXPECTED_PNGS = {f"w{w}/{c}/{c}_{i:05d}.png" for w in ("1.0", "0.8") for c in ("good", "bad") for i in range(6)}


def pngs(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.startswith(".")}


def test_killed_generate_rerun_ends_pixel_identical(tiny_model, lora_reference, data, tmp_path, capsys, unchanged):
    from generate.__main__ import main

    reference = tmp_path / "reference"
    assert in_process(main, generate_args(tiny_model, lora_reference, data, reference)) == 0
    assert pngs(reference) == EXPECTED_PNGS

    out = tmp_path / "synthetic"
    kill_when("generate", generate_args(tiny_model, lora_reference, data, out), lambda: len(pngs(out)) >= 3,
              tmp_path / "killed.log")
    made = pngs(out)
    assert 3 <= len(made) < len(EXPECTED_PNGS), f"{len(made)} PNGs at the kill: not mid-way"

    capsys.readouterr()
    assert in_process(main, generate_args(tiny_model, lora_reference, data, out)) == 0
    said = capsys.readouterr().out
    assert f"{len(made)} were there" in said, f"the re-run did not keep the {len(made)} PNGs made before the kill: {said}"

    assert pngs(out) == EXPECTED_PNGS  # nothing missing, nothing extra
    for rel in sorted(EXPECTED_PNGS):
        with Image.open(out / rel) as got, Image.open(reference / rel) as want:
            got.load()  # every PNG decodes whole: no half file
            assert got.size == want.size and got.mode == want.mode, rel
            assert np.array_equal(np.asarray(got), np.asarray(want)), f"{rel} differs from the uninterrupted run"
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(r["file"] for r in lines) == sorted(EXPECTED_PNGS)  # exactly one line per image
    ref_lines = {r["file"]: r for r in map(json.loads, (reference / "manifest.jsonl").read_text().splitlines())}
    for r in lines:  # the same prompt and seed behind each image
        assert (r["seed"], r["prompt"], r["lora_weight"]) == tuple(ref_lines[r["file"]][k] for k in ("seed", "prompt", "lora_weight"))
    assert leftovers(out) == []


# --------------------------------------------------------------------------- 3. classify cv

def cv_args(data, out, cache) -> list:
    return ["cv", "--data", data, "--output", out, "--cache-dir", cache, *CV_FLAGS]


def shards(cache: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of the feature cache's shards."""
    return {p.relative_to(cache).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in cache.rglob("*.npz") if not p.name.startswith(".")}


def test_killed_classify_cv_rerun_ends_with_equal_metrics(data, tmp_path, unchanged):
    pytest.importorskip("keras")
    pytest.importorskip("sklearn")
    from classify.__main__ import main

    reference = tmp_path / "reference"
    assert in_process(main, cv_args(data, reference, tmp_path / "cache_ref")) == 0

    out, cache = tmp_path / "report", tmp_path / "cache"
    kill_when("classify", cv_args(data, out, cache), lambda: bool(shards(cache)), tmp_path / "killed.log")
    kept = shards(cache)
    assert kept and not (out / "results.json").exists(), "not killed mid-way"

    assert in_process(main, cv_args(data, out, cache)) == 0  # the same command
    now = shards(cache)
    assert {k: now.get(k) for k in kept} == kept, "the re-run recomputed shards the killed run had written"

    want, got = json.loads((reference / "results.json").read_text()), json.loads((out / "results.json").read_text())
    for mix in want["tables"]:
        assert [t["metrics"] for t in got["tables"][mix]] == [t["metrics"] for t in want["tables"][mix]]
        assert [t["confusion"] for t in got["tables"][mix]] == [t["confusion"] for t in want["tables"][mix]]
    assert [(r["fold"], r["mix"], r["metrics"]) for r in got["runs"]] == [(r["fold"], r["mix"], r["metrics"]) for r in want["runs"]]
    for run in sorted((reference / "runs").rglob("fold_*.json")):
        rel = run.relative_to(reference)
        a, b = json.loads(run.read_text()), json.loads((out / rel).read_text())
        assert (a["test"], a["y_true"], a["y_pred"]) == (b["test"], b["y_true"], b["y_pred"]), rel
        # close, not equal: TensorFlow may already run in this process (other tests) with another thread pool
        np.testing.assert_allclose(b["probs"], a["probs"], rtol=1e-5, atol=1e-6, err_msg=str(rel))
    assert sorted(p.name for p in out.glob("report*")) == ["report.html", "report.md"]  # the report, once
    assert leftovers(out) == [] and leftovers(cache) == []
