"""Promise: results do not depend on where the study's folder lies.

The same small study (a LoRA's images, a CV and a realism report) run in two folders, and again after moving
one of them, gives identical `results.csv` rows and realism figures, and the second folder's images hit the
feature cache the first one filled: cache keys are the decoded pixels, never the file bytes (a PNG's text
chunks hold a creation time and provenance), and provenance paths are relative to the output folder.
"""
from __future__ import annotations

import json
import shutil

from PIL import Image

from .test_promise_outputs import CLS, run, world  # noqa: F401 - the module's fixture: DATA, a LoRA folder


def _study(w, root, cache):
    """Generate into ROOT/syn, then CV and realism of ROOT/syn into ROOT/cv and ROOT/realism."""
    syn = root / "syn"
    r = run("generate", "--model", w["model"], "--lora", w["lora"], "--data", w["data"], "--output", syn, "--count", 2,
            "--size", 32, 32, "--steps", 2, "--lora-weights", 1.0, "--seed", 0, "--no-progress")
    assert r.returncode == 0, r.stderr
    return _measure(w, root, cache)


def _measure(w, root, cache):
    syn = root / "syn"
    r = run("classify", "cv", "--data", w["data"], "--synthetic", syn, "--output", root / "cv", "--folds", 2, "--epochs", 1,
            "--mixes", "real,real+50", "--cache-dir", cache, *CLS)
    assert r.returncode == 0, r.stderr
    r = run("classify", "realism", "--data", w["data"], "--synthetic", syn, "--output", root / "realism",
            "--cache-dir", cache, *CLS)
    assert r.returncode == 0, r.stderr
    rows = json.loads((root / "realism" / "realism.json").read_text())["rows"]
    return (root / "cv" / "results.csv").read_text(), rows


def _shards(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.npz"))


def test_same_study_in_two_folders_and_moved_gives_identical_results(world, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    first = _study(world, tmp_path / "a", cache)
    shards = _shards(cache)
    pngs = sorted((tmp_path / "a" / "syn").rglob("*.png"))
    assert pngs
    for p in pngs:  # provenance holds no absolute path
        text = Image.open(p).text["cellsynth"]
        assert str(tmp_path) not in text and str(world["root"]) not in text, text[:300]
    second = _study(world, tmp_path / "elsewhere" / "deeper" / "b", cache)
    assert second == first
    assert _shards(cache) == shards, "the same pixels in another folder missed the feature cache"
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "a", moved)
    shutil.rmtree(moved / "cv")
    shutil.rmtree(moved / "realism")
    assert _measure(world, moved, cache) == first
    assert _shards(cache) == shards
