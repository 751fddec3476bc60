"""The same small study, run twice in two folders with every seed left at its default, gives byte-identical
`results.csv` and LoRA files, and the same synthetic images (one machine, the same threads per job; the second run
goes through SLURM where the test cluster can start, so the executor changes too)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.workflow


def digests(out: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob(pattern))}


def test_the_same_study_in_two_folders_gives_the_same_results(local_run, second_run):
    """The session's small study (tests/studies.py: no seed anywhere) run again in a second folder, with Python's
    hash seed random (the session's `second_run`: on SLURM where it can start, else locally), against the first:
    the defaults alone must make it reproducible."""
    assert "seed" not in (local_run / "study.yaml").read_text()
    outs = [local_run / "out", second_run.folder / "out"]
    a, b = outs
    assert (a / "report" / "results.csv").read_bytes() == (b / "report" / "results.csv").read_bytes()
    loras = digests(a / "lora", "*.safetensors")
    assert loras and loras == digests(b / "lora", "*.safetensors")
    # synthetic images: the same files and pixels. The one known difference is the base model's path in each PNG's
    # `cellsynth` record: the record keeps the model as given, and the workflow gives the study's own tiny model by its
    # absolute path (OUT/models/tiny-sd), which differs between the two folders; the A1111 `parameters` text names
    # the model by its folder name only, so it is equal.
    pngs, other = digests(a / "synthetic", "*.png"), digests(b / "synthetic", "*.png")
    assert pngs and sorted(pngs) == sorted(other)
    for rel in pngs:
        with Image.open(a / "synthetic" / rel) as x, Image.open(b / "synthetic" / rel) as y:
            assert np.array_equal(np.asarray(x), np.asarray(y)), rel
            assert x.text["parameters"] == y.text["parameters"], rel
            rx, ry = json.loads(x.text["cellsynth"]), json.loads(y.text["cellsynth"])
            assert {k: v for k, v in rx.items() if k != "model"} == {k: v for k, v in ry.items() if k != "model"}, rel
