"""The same small study, run twice in two folders with every seed left at its default, gives byte-identical
`results.csv` and LoRA files, and the same synthetic images (one machine, one thread per library)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_workflow import snakemake, write_study

pytestmark = pytest.mark.workflow

# the small study of test_workflow, with no seed anywhere: the defaults must make it reproducible
STUDY = """\
study: {output: out}
data: {data: data, templates: templates.yaml}
lora: {model: tiny, per: class, repeats: 1, epochs: 1, batch_size: 2, resolution: 64, rank: 4, alpha: 4.0,
       validation_images: 0}
generate: {steps: 2, size: [32, 32], batch_size: 8, lora_weights: [1.0], fraction: [0.5]}
classify: {folds: 2, group_by: "regex:^\\\\d{8}", backbone: EfficientNetB0, weights: calibrated, image_size: 32,
           epochs: 1, augment: false, mixes: [real, real+50]}
"""


def digests(out: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob(pattern))}


def test_the_same_study_in_two_folders_gives_the_same_results(tmp_path, demo_data):
    env = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "PYTHONHASHSEED": "random"}
    outs = []
    for name in ("first", "second"):
        folder = write_study(tmp_path / name, demo_data)
        (folder / "study.yaml").write_text(STUDY)
        res = snakemake(folder, "--cores", "1", env=env, timeout=2400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        outs.append(folder / "out")
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
