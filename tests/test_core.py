"""The shared core: layout names, the rounding rule, output guards, fingerprints, the schema and its flags."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts import fingerprint, guard, layout
from prompts.config import load_study, validate_study_file
from prompts.dataset import read_dataset
from prompts.errors import UserError
from prompts.schema import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, value: int = 100, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, **kw)


# --------------------------------------------------------------------------- layout

@pytest.mark.parametrize("w", [1.0, 0.8, 0.75, 1e-05, -0.5, 0.0, 2.0, 1 / 3, 123456789.0])
def test_weight_folder_names_round_trip(w):
    name = layout.weight_dir_name(w)
    assert name.startswith("w") and "/" not in name
    assert layout.parse_weight_dir(name) == w


def test_weight_folder_names_refuse_non_finite_and_foreign_folders():
    with pytest.raises(UserError):
        layout.weight_dir_name(float("nan"))
    for name in ("work", "w", "wnan", "winf", "w 1.0", "fold_0", "w1.0.bak"):
        assert layout.parse_weight_dir(name) is None
    assert layout.weight_dir_name(-0.0) == "w0.0"


def test_fold_and_group_names_round_trip():
    assert layout.parse_fold_name(layout.fold_name(12)) == 12
    assert layout.parse_fold_name("fold_x") is None
    assert layout.parse_group_name(layout.group_name("Zellen ü", "A549")) == ("Zellen ü", "A549")
    assert layout.parse_group_name(layout.group_name("bad")) == ("bad", None)
    d = layout.synthetic_class_dir("/o", 3, 1e-05, "Zellen ü", "HeLa")
    assert d == Path("/o/fold_3/w1e-05/HeLa/Zellen ü")


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", " lead", "trail ", "tab\there", "x" * 201])
def test_names_from_user_input_must_be_one_folder_name(bad):
    with pytest.raises(UserError, match="folder name"):
        layout.check_name(bad, "class")


def test_names_accept_unicode_and_spaces_inside():
    for ok in ("good", "Zellen ü", "spheroid 2", "細胞", "a-b_c.d"):
        assert layout.check_name(ok) == ok


@pytest.mark.parametrize("n,f,expected", [(25, 0.5, 13), (6, 0.25, 2), (110, 0.1, 11), (10, 0.25, 3), (7, 1.0, 7),
                                          (3, 0.1, 0), (25, Fraction(50, 100), 13), (5, 0.1, 1)])
def test_count_of_fraction_rounds_half_up_on_the_decimal(n, f, expected):
    assert layout.count_of_fraction(n, f) == expected


# --------------------------------------------------------------------------- guards

def test_output_guards(tmp_path):
    data = tmp_path / "data"
    _png(data / "a" / "x.png")
    for out in (data, data / "sub", data / "a"):
        with pytest.raises(UserError, match="inside the data folder"):
            guard.check_output_dir(out, data=data)
    link = tmp_path / "link"
    link.symlink_to(data)
    with pytest.raises(UserError, match="inside the data folder"):
        guard.check_output_dir(link / "out", data=data)
    f = tmp_path / "file.txt"
    f.write_text("mine")
    with pytest.raises(UserError, match="existing file"):
        guard.check_output_dir(f)
    with pytest.raises(UserError, match="existing file"):
        guard.check_output_dir(f / "below")
    for overwrite in (None, False, True):  # the user's file: never replaced, and --overwrite is not suggested
        with pytest.raises(UserError, match="did not write") as refused:
            guard.check_new_file(f, overwrite=overwrite)
        assert "pass --overwrite" not in str(refused.value)
    from prompts import fingerprint

    ours = tmp_path / "ours.json"
    fingerprint.write_json(ours, {"a": 1}, "classify split")
    with pytest.raises(UserError, match="pass --overwrite"):
        guard.check_new_file(ours, overwrite=False)
    assert guard.check_new_file(ours, overwrite=True) == ours
    assert guard.check_output_dir(tmp_path / "new" / "deeper", data=data) == tmp_path / "new" / "deeper"
    assert f.read_text() == "mine"


# --------------------------------------------------------------------------- fingerprints

def test_fingerprint_says_what_changed(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("one")
    fp1 = fingerprint.make(settings={"rank": 4}, images=fingerprint.files_part([a]))
    assert fingerprint.diff(fp1, fingerprint.make(settings={"rank": 4}, images=fingerprint.files_part([a]))) == []
    a.write_text("two")
    os.utime(a, ns=(1, 1))  # a new mtime is not needed: size+mtime key; force a different key anyway
    fp2 = fingerprint.make(settings={"rank": 8}, images=fingerprint.files_part([a]))
    assert fingerprint.diff(fp1, fp2) == ["images", "settings"]
    with pytest.raises(UserError, match="images, settings changed"):
        fingerprint.check(fp1, fp2, "LoRA x", "pass --overwrite")
    fingerprint.write(tmp_path / "fp.json", fp1)
    assert fingerprint.read(tmp_path / "fp.json") == fp1
    assert fingerprint.read(tmp_path / "missing.json") is None


def test_settings_part_follows_the_result_mark():
    lora = SECTIONS["lora"]()
    part = fingerprint.settings_part(lora)
    assert "rank" in part and "unet_lr" in part
    for not_result in ("output", "overwrite", "checkpointing_steps", "classes", "model"):
        assert not_result not in part  # model: its content is a part of its own


def test_model_part_hashes_weights(tmp_path):
    m = tmp_path / "m"
    (m / "unet").mkdir(parents=True)
    (m / "unet" / "w.safetensors").write_bytes(b"abc")
    d1 = fingerprint.model_part(str(m))
    (m / "unet" / "w.safetensors").write_bytes(b"abd")
    assert fingerprint.model_part(str(m)) != d1
    assert fingerprint.model_part("org/model") == "hub:org/model"


# --------------------------------------------------------------------------- schema and study files

def test_schema_fields_have_help_and_valid_marks():
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"
            for key in ("ge", "gt", "le", "lt"):
                assert f.metadata[key] is None or isinstance(f.metadata[key], (int, float))


def test_study_file_errors_one_line_each(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("lora:\n  unet_lr: .nan\n  rank: -1\n  epoch: 3\nclassify:\n  folds: 1\ngenerate:\n  strength: [0.5, 1.5]\n")
    errors = validate_study_file(study)
    assert len(errors) == 5
    assert any("lora.unet_lr" in e and "finite" in e for e in errors)
    assert any("lora.rank: -1 must be at least 1" in e for e in errors)
    assert any("lora.epoch: unknown key" in e for e in errors)
    assert any("generate.strength[1]" in e or "1.5 must be at most 1" in e for e in errors)
    r = _run("-m", "prompts", "check", str(study))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 5 and "Traceback" not in r.stderr


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("lora:\n  rank: 4\n  rank: 8\n")
    with pytest.raises(UserError, match="'rank' is written twice"):
        load_study(study)


def test_every_path_key_resolves_relative_to_the_study_file(tmp_path):
    study = tmp_path / "sub" / "s.yaml"
    study.parent.mkdir()
    study.write_text("data:\n  data: imgs\nclassify:\n  weights: w.weights.h5\nlora:\n  model: tiny\n")
    s = load_study(study)
    assert s.data.data == str(study.parent / "imgs")
    assert s.classify.weights == str(study.parent / "w.weights.h5")
    assert s.lora.model == "tiny"  # a keyword, not a path
    assert load_study(None).classify.weights == "imagenet"


@pytest.mark.parametrize("command,section", [(["lora", "train"], "lora"), (["generate"], "generate"),
                                              (["classify", "cv"], "classify")])
def test_every_schema_key_is_a_flag(command, section):
    """Each key is exactly one flag (`--fold` is not `--folds`), booleans have their `--no-` twin, and a
    key with fixed choices lists exactly the schema's choices."""
    import re
    import typing

    from .helpers import help_flags

    r = _run("-m", *command, "--help")
    assert r.returncode == 0, r.stderr
    flags = help_flags(r.stdout)
    keys = [(section, f) for f in dataclasses.fields(SECTIONS[section]) if not (section == "classify" and f.name == "overwrite")]
    from prompts.schema.data import PAIR_KEYS  # how image-mask pairs are found: the segmentation commands' keys

    keys += [("data", f) for f in dataclasses.fields(SECTIONS["data"])
             if command != ["classify", "cv"] or f.name not in ("templates", *PAIR_KEYS)]
    for name, f in keys:
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, f"{command}: no flag for {name}.{f.name}"
        hint = typing.get_type_hints(SECTIONS[name])[f.name]
        if hint is bool:
            assert "--no-" + flag[2:] in flags, f"{command}: {flag} has no --no- twin"
        if typing.get_origin(hint) is typing.Literal:
            choices = "{" + ",".join(map(str, typing.get_args(hint))) + "}"
            assert re.search(rf"^\s+{re.escape(flag)} {re.escape(choices)}", r.stdout, re.M), f"{command}: {flag} choices"


@pytest.mark.parametrize("argv,needle", [
    (["-m", "lora", "train", "--unet-lr", "nan"], "--unet-lr"),
    (["-m", "lora", "train", "--rank", "0"], "--rank: 0 must be at least 1"),
    (["-m", "generate", "--cfg", "-1"], "--cfg"),
    (["-m", "generate", "--lora-weights", "1.0,inf"], "--lora-weights"),
    (["-m", "generate", "--strength", "0"], "--strength"),
    (["-m", "classify", "split", "--folds", "x"], "--folds"),
    (["-m", "classify", "cv", "--no-such-flag"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line(argv, needle):
    r = _run(*argv)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_required_key_names_flag_and_key(tmp_path):
    r = _run("-m", "lora", "train", "--data", str(tmp_path))
    assert r.returncode == 2 and "--model is missing" in r.stderr and "lora.model" in r.stderr


# --------------------------------------------------------------------------- the dataset reader keeps inside DATA

def test_labels_csv_cannot_reach_outside_data(tmp_path):
    data = tmp_path / "data"
    _png(data / "a" / "x.png")
    _png(tmp_path / "outside.png")
    for entry in ("../outside.png", str(tmp_path / "outside.png"), "a/../../outside.png"):
        (data / "labels.csv").write_text(f"file,label\n{entry},a\n")
        with pytest.raises(UserError, match="outside the data folder"):
            read_dataset(data)


@pytest.mark.parametrize("label", ["../../../escaped", "sphero/cyte", ".hidden", ""])
def test_labels_become_path_parts_only_when_safe(tmp_path, label):
    data = tmp_path / "data"
    _png(data / "a" / "x.png")
    (data / "labels.csv").write_text(f"file,label\na/x.png,{label}\n")
    with pytest.raises(UserError, match="labels.csv:2"):
        read_dataset(data)


def test_cell_line_with_group_separator_is_refused(tmp_path):
    data = tmp_path / "data"
    _png(data / "a" / "x.png")
    (data / "labels.csv").write_text("file,label,cell_line\na/x.png,a,HEK__293\n")
    with pytest.raises(UserError, match="'__'"):
        read_dataset(data)


def test_symlinked_class_folders_are_followed_and_loops_stop(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere" / "b"
    _png(data / "a" / "x.png")
    _png(elsewhere / "y.png")
    (data / "b").symlink_to(elsewhere, target_is_directory=True)
    (data / "a" / "loop").symlink_to(data, target_is_directory=True)
    ds = read_dataset(data)
    assert [(r.path, r.label) for r in ds.records] == [("a/x.png", "a"), ("b/y.png", "b")]


def test_empty_class_folder_is_an_error(tmp_path):
    data = tmp_path / "data"
    _png(data / "a" / "x.png")
    (data / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no images"):
        read_dataset(data)


def test_decompression_bomb_is_one_line_and_skippable(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _png(data / "a" / "x.png", size=16)
    _png(data / "a" / "big.png", size=64)
    monkeypatch.setenv("CELLSYNTH_MAX_PIXELS", "1000")  # the toolkit's limit on every reader path: 64x64x3 > 1000
    with pytest.raises(UserError, match="too large to decode safely"):
        read_dataset(data, check_images=True)
    ds = read_dataset(data, skip_bad_images=True)
    assert [r.path for r in ds.records] == ["a/x.png"]


def test_exponents_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 as text; a learning rate written that way must still be a number."""
    study = tmp_path / "s.yaml"
    study.write_text("lora:\n  unet_lr: 1e-4\n  text_encoder_lr: 5E-5\ngenerate:\n  lora_weights: [1, 8e-1]\n")
    s = load_study(study)
    assert s.lora.unet_lr == 1e-4 and s.lora.text_encoder_lr == 5e-5 and s.generate.lora_weights == [1.0, 0.8]


def test_storage_urls_are_not_paths(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("search:\n  storage: sqlite:///search.db\n")
    assert load_study(study).search.storage == "sqlite:///search.db"
    study.write_text("search:\n  storage: runs/search.journal\n")
    assert load_study(study).search.storage == str(tmp_path / "runs" / "search.journal")
