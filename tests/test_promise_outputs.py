"""Promise: nothing the user owns is lost and nothing escapes its folder, whatever output location a command is given.

A matrix of output locations (equal to DATA, inside DATA, an existing file, an existing foreign folder)
for every command: the command either writes only its own new files under OUT or refuses with one line
and exit status 2; in every case nothing inside DATA changes and nothing outside OUT changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import run_command, tree_checksums


def run(package, *argv):
    """The command in this process (tests.helpers.run_command): what each promise checks is files and one stderr line."""
    return run_command(package, *argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """DATA (2 classes x 4 images), a trained LoRA folder and a synthetic tree, under one root."""
    root = tmp_path_factory.mktemp("promise")
    data = root / "data"
    rng = np.random.default_rng(0)
    for label in ("round", "flat"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / label / f"{label} {i}.png")
    lora = root / "made" / "lora"
    r = run("lora", "train", "--model", tiny_model, "--data", data, "--output", lora, "--resolution", 32, "--epochs", 1,
            "--rank", 2, "--alpha", 2, "--validation-images", 0, "--repeats", 1)
    assert r.returncode == 0, r.stderr
    syn = root / "made" / "synthetic"
    r = run("generate", "--model", tiny_model, "--lora", lora, "--data", data, "--output", syn, "--count", 2, "--size", 32, 32,
            "--steps", 2, "--lora-weights", 1.0, "--seed", 0, "--no-progress")
    assert r.returncode == 0, r.stderr
    return {"root": root, "data": data, "lora": lora, "syn": syn, "model": tiny_model}


CLS = ("--backbone", "EfficientNetB0", "--image-size", 32, "--weights", "none", "--no-progress")
COMMANDS = {
    "lora train": lambda w, out: ("lora", "train", "--model", w["model"], "--data", w["data"], "--output", out, "--resolution", 32,
                                  "--epochs", 1, "--rank", 2, "--validation-images", 0, "--repeats", 1),
    "generate": lambda w, out: ("generate", "--model", w["model"], "--lora", w["lora"], "--data", w["data"], "--output", out,
                                "--count", 1, "--size", 32, 32, "--steps", 2, "--lora-weights", 1.0, "--seed", 1, "--no-progress"),
    "classify split": lambda w, out: ("classify", "split", "--data", w["data"], "--folds", 2, "--output", out / "split.json"
                                      if out.is_dir() or not out.exists() else out),
    "classify cv": lambda w, out: ("classify", "cv", "--data", w["data"], "--output", out, "--folds", 2, "--epochs", 1,
                                   "--mixes", "real", *CLS),
    "classify realism": lambda w, out: ("classify", "realism", "--data", w["data"], "--synthetic", w["syn"], "--output", out, *CLS),
    "classify calibrate-weights": lambda w, out: ("classify", "calibrate-weights", "--data", w["data"], "--backbone", "EfficientNetB0",
                                                  "--image-size", 32, "--max-images", 4, "--output",
                                                  out / "b0.weights.h5" if out.is_dir() or not out.exists() else out),
    "classify blind-test": lambda w, out: ("classify", "blind-test", "--data", w["data"], "--synthetic", w["syn"], "--output", out,
                                           "--per-class", 1, "--size", 32),
}
LOCATIONS = ("equal to DATA", "inside DATA", "an existing file", "a foreign folder")


def _location(w, where: str, command: str) -> Path:
    root, data = w["root"], w["data"]
    if where == "equal to DATA":
        return data
    if where == "inside DATA":
        return data / "round"  # an existing class folder: the worst place to write
    if where == "an existing file":
        f = root / "user" / f"notes {command}.txt"
        f.parent.mkdir(exist_ok=True)
        f.write_text("the user's own notes\n")
        return f
    foreign = root / "foreign" / command.replace(" ", "_")
    # A folder the user owns, holding files and folders named like the command's outputs would be.
    for rel in ("notes.txt", "round/mine.txt", "flat/mine.txt", "w1.0/round/mine.txt", "split.json", "report.md",
                "b0.weights.h5", "blind_test.html", "realism.json", "key.json"):
        (foreign / rel).parent.mkdir(parents=True, exist_ok=True)
        (foreign / rel).write_text(f"user file {rel}\n")
    return foreign


@pytest.mark.parametrize("where", LOCATIONS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_outputs_never_touch_what_the_user_owns(world, command, where):
    out = _location(world, where, command)
    before = tree_checksums(world["root"])
    r = run(*COMMANDS[command](world, out))
    after = tree_checksums(world["root"])
    assert "Traceback" not in r.stderr, r.stderr
    if where != "a foreign folder":
        assert r.returncode == 2, f"{command} with output {where}: exit {r.returncode}\n{r.stderr}"
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert after == before, f"{command} changed files although it refused"
        return
    assert r.returncode in (0, 2), r.stderr
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, f"{command} changed or removed files it did not write: {sorted(changed)[:5]}"
    out_rel = str(out.relative_to(world["root"]))
    added = {k for k in after if k not in before}
    assert all(k.startswith(out_rel + "/") for k in added), f"{command} wrote outside OUT: {sorted(added)[:5]}"


# --------------------------------------------------------------------------- --overwrite replaces only the tool's own
#
# Every writing command x (the user's file, the user's folder, the tool's own output) at a path the command writes.
# The user's file or folder is refused with one line whether or not --overwrite is given, and the refusal never
# suggests --overwrite (it would not succeed); the tool's own output is refused without --overwrite (saying
# --overwrite) where the command does not simply resume, and replaced with it.

def _split_target(w, out):
    return out / "split.json", ("classify", "split", "--data", w["data"], "--folds", 2, "--output", out / "split.json")


def _cv_target(w, out):
    return out / "report.html", ("classify", "cv", "--data", w["data"], "--output", out, "--folds", 2, "--epochs", 1,
                                 "--mixes", "real", *CLS)


def _realism_target(w, out):
    return out / "realism.json", ("classify", "realism", "--data", w["data"], "--synthetic", w["syn"], "--output", out, *CLS)


def _convert_target(w, out):
    src = w["lora"] / "round" / "pytorch_lora_weights.safetensors"
    return out / "my.safetensors", ("lora", "convert", "--to", "kohya", src, out / "my.safetensors")


def _generate_target(w, out):
    first = sorted(p.relative_to(w["syn"]) for p in w["syn"].rglob("*.png"))[0]
    return out / first, ("generate", "--model", w["model"], "--lora", w["lora"], "--data", w["data"], "--output", out,
                         "--count", 2, "--size", 32, 32, "--steps", 2, "--lora-weights", 1.0, "--seed", 0, "--no-progress")


def _train_target(w, out):
    return out / "round" / "pytorch_lora_weights.safetensors", COMMANDS["lora train"](w, out)


TARGETS = {"classify split": _split_target, "classify cv": _cv_target, "classify realism": _realism_target,
           "lora convert": _convert_target, "generate": _generate_target, "lora train": _train_target}
RESUMES = {"classify cv", "generate", "lora train"}  # a plain re-run onto their own output resumes: no refusal
OWNERS = ("the user's file", "the user's folder", "the tool's own output")


@pytest.mark.parametrize("owner", OWNERS)
@pytest.mark.parametrize("command", list(TARGETS))
def test_overwrite_replaces_only_the_tools_own_outputs(world, command, owner, tmp_path):
    out = tmp_path / "out"
    target, argv = TARGETS[command](world, out)
    if owner == "the tool's own output":
        r = run(*argv)
        assert r.returncode == 0 and target.exists(), r.stderr
        if command not in RESUMES:
            before = tree_checksums(out)
            r = run(*argv)
            assert r.returncode == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert tree_checksums(out) == before
        r = run(*argv, "--overwrite")
        assert r.returncode == 0, r.stderr
        return
    if owner == "the user's file":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"the user's own file\n")
        if command == "classify cv":
            (out / "results.csv").write_text("the user's own results\n")
    else:
        (target / "inside").mkdir(parents=True)
        (target / "inside" / "notes.txt").write_text("the user's own folder\n")
    before = tree_checksums(tmp_path)
    for flags in ((), ("--overwrite",)):
        r = run(*argv, *flags)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 2, f"{command} {flags} over {owner}: exit {r.returncode}\n{r.stderr}"
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "pass --overwrite" not in r.stderr, f"suggests --overwrite where it would not succeed: {r.stderr}"
        assert tree_checksums(tmp_path) == before, f"{command} {flags} changed the user's {owner}"
