"""Promise: bad input gets one clear line naming the file, key or value, exit status 2, no traceback, nothing written.

One table of bad inputs across the commands, run in-process (fast); each case checks the exit status,
that stderr is one line holding the expected words, and that no file under the test's root changed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import tree_checksums as _checksums


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    rng = np.random.default_rng(0)
    for label in ("round", "flat"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / label / f"{i}.png")
    (root / "notes.txt").write_text("mine\n")
    (root / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (root / "model.ckpt").write_bytes(b"not really a pickle")
    (root / "split_str.json").write_text('{"version": 1, "folds": [{"train": "round/0.png", "test": ["flat/0.png"]}]}')
    (root / "dup.yaml").write_text("lora:\n  rank: 4\n  rank: 8\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "notyaml.yaml").write_text("lora: [unclosed\n")
    (root / "unknown.yaml").write_text("lora:\n  epoch: 3\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "search.yaml").write_text(f"lora:\n  model: {tiny_model}\n  resolution: 32\nsearch:\n  trials: 1\n")
    (root / "garbage.journal").write_bytes(b"\x00\xffnot a journal\x9c\n")
    (root / "truncated.journal").write_text('{"op_code": 0, "worker_id": "a-1", "study_name": "lora-se')
    (root / "appended.journal").write_text('{"op_code": 0, "worker_id": "a-1", "study_name": "x", "directions": [1]}\n'
                                           "the user's own line\n")
    from classify.__main__ import main as classify_main

    assert classify_main(["split", "--data", str(data), "--folds", "2", "--output", str(root / "split.json")]) == 0
    return {"root": root, "data": data, "model": tiny_model}


def _data_variant(w, name: str, csv: str | None = None, extra=None) -> Path:
    """A copy of DATA with a labels.csv or an extra file, under the root."""
    import shutil

    d = w["root"] / name
    if not d.exists():
        shutil.copytree(w["data"], d)
        if csv is not None:
            (d / "labels.csv").write_text(csv)
        if extra:
            extra(d)
    return d


def _sibling_link(d: Path) -> None:
    (d / "neutrophil").symlink_to("round")  # a second class name for the same images


def _empty_class(d: Path) -> None:
    (d / "empty").mkdir()


def _corrupt_image(d: Path) -> None:
    (d / "round" / "broken.png").write_bytes(b"\x89PNG broken")


LORA = lambda w, *a: ("lora", ["train", "--model", str(w["model"]), "--data", str(w["data"]), "--output", str(w["root"] / "out"),
                                "--resolution", "32", "--epochs", "1", *a])
GEN = lambda w, *a: ("generate", ["--model", str(w["model"]), "--data", str(w["data"]), "--output", str(w["root"] / "gen"), "--count", "1",
                                  "--size", "32", "32", "--steps", "2", *a])
CLS = lambda w, cmd, *a: ("classify", [cmd, "--data", str(w["data"]), *a])
SEARCH = lambda w, *a: ("study", ["search", "--config", str(w["root"] / "search.yaml"), "--data", str(w["data"]),
                                  "--split", str(w["root"] / "split.json"),
                                  "--output", str(w["root"] / "search"), *a])

CASES = {
    "lora: output equal to data": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--data", str(w["data"]), "--output",
                                                       str(w["data"])]), "inside the data folder"),
    "lora: NaN learning rate": (lambda w: LORA(w, "--unet-lr", "nan"), "--unet-lr"),
    "lora: negative rank": (lambda w: LORA(w, "--rank", "-4"), "--rank"),
    "lora: resolution not a multiple of 8": (lambda w: LORA(w, "--resolution", "30"), "--resolution"),
    "lora: missing model": (lambda w: ("lora", ["train", "--model", str(w["root"] / "nope"), "--data", str(w["data"]), "--output",
                                                str(w["root"] / "out")]), "nope"),
    "lora: pickle model unasked": (lambda w: ("lora", ["train", "--model", str(w["root"] / "model.ckpt"), "--data", str(w["data"]),
                                                       "--output", str(w["root"] / "out")]), "pickle"),
    "lora: fold without split": (lambda w: LORA(w, "--fold", "0"), "--split"),
    "lora: unknown class": (lambda w: LORA(w, "--classes", "oval"), "oval"),
    "lora: output is a file": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--data", str(w["data"]), "--output",
                                                   str(w["root"] / "notes.txt")]), "notes.txt"),
    "lora: split whose train is a string": (lambda w: LORA(w, "--split", str(w["root"] / "split_str.json"), "--fold", "0"), "split_str.json"),
    "lora: label escaping the folder": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--output", str(w["root"] / "out"), "--data",
                                                            str(_data_variant(w, "d_trav", "file,label\nround/0.png,../../escaped\n"))]),
                                        "folder name"),
    "lora: labels.csv entry outside": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--output", str(w["root"] / "out"), "--data",
                                                           str(_data_variant(w, "d_abs", "file,label\n/etc/passwd,round\n"))]),
                                       "outside the data folder"),
    "lora: empty class folder": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--output", str(w["root"] / "out"), "--data",
                                                     str(_data_variant(w, "d_empty", None, _empty_class))]), "holds no images"),
    "lora: corrupt image": (lambda w: ("lora", ["train", "--model", str(w["model"]), "--output", str(w["root"] / "out"), "--data",
                                                str(_data_variant(w, "d_corrupt", None, _corrupt_image))]), "broken.png"),
    "lora: duplicate YAML key": (lambda w: LORA(w, "--config", str(w["root"] / "dup.yaml")), "written twice"),
    "lora: unknown YAML key": (lambda w: LORA(w, "--config", str(w["root"] / "unknown.yaml")), "lora.epoch"),
    "lora: YAML list": (lambda w: LORA(w, "--config", str(w["root"] / "list.yaml")), "mapping"),
    "lora: invalid YAML": (lambda w: LORA(w, "--config", str(w["root"] / "notyaml.yaml")), "not valid YAML"),
    "generate: NaN LoRA weight": (lambda w: GEN(w, "--lora-weights", "nan"), "--lora-weights"),
    "generate: strength above 1": (lambda w: GEN(w, "--strength", "1.5"), "--strength"),
    "generate: zero steps": (lambda w: GEN(w, "--steps", "0"), "--steps"),
    "generate: negative cfg": (lambda w: GEN(w, "--cfg", "-2"), "--cfg"),
    "generate: size not a multiple of 8": (lambda w: GEN(w, "--size", "30", "30"), "--size"),
    "generate: unknown sampler": (lambda w: GEN(w, "--sampler", "Heun++"), "Heun++"),
    "generate: missing LoRA folder": (lambda w: GEN(w, "--lora", str(w["root"] / "no-lora")), "no-lora"),
    "generate: LoRA file with a bad header": (lambda w: GEN(w, "--lora", str(w["root"] / "bad.safetensors")), "bad.safetensors"),
    "generate: output inside data": (lambda w: ("generate", ["--model", str(w["model"]), "--data", str(w["data"]), "--output",
                                                             str(w["data"] / "syn"), "--count", "1", "--lora", str(w["root"] / "bad.safetensors")]),
                                    "inside the data folder"),
    "classify split: replaces a file": (lambda w: CLS(w, "split", "--output", str(w["root"] / "notes.txt"), "--folds", "2"), "did not write"),
    "classify split: one fold": (lambda w: CLS(w, "split", "--output", str(w["root"] / "s.json"), "--folds", "1"), "--folds"),
    "classify split: unknown group column": (lambda w: CLS(w, "split", "--output", str(w["root"] / "s.json"), "--group-by", "donor"), "donor"),
    "classify split: bad regex": (lambda w: CLS(w, "split", "--output", str(w["root"] / "s.json"), "--group-by", "regex:(["), "regex"),
    "classify cv: output equal to data": (lambda w: CLS(w, "cv", "--output", str(w["data"]), "--weights", "none"), "inside the data folder"),
    "classify cv: unknown mix": (lambda w: CLS(w, "cv", "--output", str(w["root"] / "cv"), "--mixes", "real+x", "--weights", "none", "--folds", "2"),
                               "real+x"),
    "classify cv: split whose train is a string": (lambda w: CLS(w, "cv", "--output", str(w["root"] / "cv"), "--split",
                                                                 str(w["root"] / "split_str.json"), "--weights", "none"), "split_str.json"),
    "classify cv: missing weights file": (lambda w: CLS(w, "cv", "--output", str(w["root"] / "cv"), "--weights",
                                                        str(w["root"] / "no.weights.h5")), "no.weights.h5"),
    "classify split: a class folder linked to a sibling": (lambda w: CLS(w, "split", "--output", str(w["root"] / "s.json"), "--data",
                                                                         str(_data_variant(w, "d_link", None, _sibling_link))),
                                                         "neutrophil and round"),
    "classify split: the user's file with --overwrite": (lambda w: CLS(w, "split", "--output", str(w["root"] / "notes.txt"), "--folds", "2",
                                                                       "--overwrite"), "did not write"),
    "classify cv: image size beyond any memory": (lambda w: CLS(w, "cv", "--output", str(w["root"] / "cv"), "--image-size", "100000",
                                                                "--weights", "none"), "100000"),
    "study search: garbage journal": (lambda w: SEARCH(w, "--storage", str(w["root"] / "garbage.journal")), "garbage.journal"),
    "study search: truncated journal": (lambda w: SEARCH(w, "--storage", str(w["root"] / "truncated.journal")), "truncated.journal"),
    "study search: journal with a line appended": (lambda w: SEARCH(w, "--storage", str(w["root"] / "appended.journal")),
                                                   "appended.journal"),
    "study search: sqlite in a missing folder": (lambda w: SEARCH(w, "--storage", "sqlite:////nonexistent/dir/x.db"), "--storage"),
    "prompts check: binary study file": (lambda w: ("prompts", ["check", str(w["root"] / "binary.yaml")]), "binary.yaml"),
    "lora: binary study file": (lambda w: LORA(w, "--config", str(w["root"] / "binary.yaml")), "binary.yaml"),
    "classify realism: no synthetic folder": (lambda w: CLS(w, "realism", "--output", str(w["root"] / "re")), "--synthetic"),
    "classify calibrate: wrong suffix": (lambda w: CLS(w, "calibrate-weights", "--output", str(w["root"] / "w.h5")), ".weights.h5"),
    "classify: data folder missing": (lambda w: ("classify", ["split", "--data", str(w["root"] / "nodata"), "--output",
                                                              str(w["root"] / "s.json")]), "nodata"),
    "classify: labels.csv without label column": (lambda w: CLS(w, "split", "--output", str(w["root"] / "s.json"), "--data",
                                                                str(_data_variant(w, "d_nolabel", "file,klass\nround/0.png,round\n"))),
                                                  "label"),
}


def _main(package: str):
    """The `main` of `python -m <package>` (every room's entry point, the new ones included)."""
    import importlib

    return importlib.import_module(f"{package}.__main__").main


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(w, case, capsys):
    build, needle = CASES[case]
    package, argv = build(w)
    before = _checksums(w["root"])
    with pytest.raises(SystemExit) as exit_info:
        _main(package)(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert exit_info.value.code == 2, f"{case}: exit {exit_info.value.code}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: not one line:\n{err}"
    assert needle in lines[0], f"{case}: {lines[0]!r} does not name {needle!r}"
    after = _checksums(w["root"])
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}, f"{case} wrote files"


# --------------------------------------------------------------------------- the schema's `required` against the commands

def _required_cases():
    """(command, section, key) for every key the schema marks as required by a command that has a CLI."""
    import dataclasses

    from prompts.schema import SECTIONS

    cases = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            cases += [(cmd, section, f.name) for cmd in f.metadata.get("required", ()) if cmd != "workflow"]
    return sorted(cases)


def _required_by(command: str) -> list[tuple[str, str]]:
    return [(s, k) for c, s, k in _required_cases() if c == command]


@pytest.mark.parametrize("command,section,key", _required_cases())
def test_each_key_the_schema_requires_is_required_by_that_command(command, section, key, tmp_path, capsys):
    """The study file gives every other key the command requires; the one left out is named in one line.

    Fails when the schema's `required` names a command that does not check it, or names it wrongly.
    """
    import yaml

    study: dict = {}
    for other_section, other_key in _required_by(command):
        if (other_section, other_key) != (section, key):
            study.setdefault(other_section, {})[other_key] = "somewhere"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    package, *sub = command.split()
    with pytest.raises(SystemExit) as exit_info:
        _main(package)([*sub, "--config", str(tmp_path / "study.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert f"--{key.replace('_', '-')} is missing" in err[0] and f"{section}.{key}" in err[0], err[0]


def test_study_output_naming_an_existing_file_is_one_line(tmp_path, capsys):
    from study.plan import load

    (tmp_path / "taken").write_text("the user's own file\n")
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "study.yaml").write_text("study:\n  output: taken\ndata:\n  data: data\nlora:\n  model: tiny\n")
    with pytest.raises(SystemExit) as exit_info:
        load(tmp_path / "study.yaml")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "study.output" in err[0] and "existing file" in err[0], err
    assert (tmp_path / "taken").read_text() == "the user's own file\n"
