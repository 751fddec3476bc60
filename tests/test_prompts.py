"""The shared vocabulary: dataset reader, image decoder, templates, config, split files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from prompts.config import apply_overrides, load_study
from prompts.dataset import group_keys, read_dataset
from prompts.errors import UserError
from prompts.images import is_grayscale, load_image
from prompts.normalize import DEFAULT
from prompts.splits import Fold, Split, read_split, write_split
from prompts.templates import load_templates

from .conftest import ROOT, shared_data


def test_class_layout(class_data):
    ds = read_dataset(class_data)
    assert ds.classes == ["bad", "good"]
    assert ds.class_counts() == {"bad": 6, "good": 6}
    assert all(r.cell_line is None for r in ds.records)
    assert ds.records[0].path == "bad/bad_0.png"


def test_cell_line_layout(demo_data):
    ds = read_dataset(demo_data)
    assert ds.classes == ["acceptable", "bad", "good"]
    assert ds.cell_lines == ["A549", "CACO", "HPMEC", "HSAEC", "HUVEC"]
    assert ds.class_counts() == {"acceptable": 9, "bad": 6, "good": 15}
    r = ds.records[0]
    assert r.path.split("/")[0] == r.cell_line and r.path.split("/")[1] == r.label


def test_labels_csv_takes_precedence_and_keeps_metadata():
    ds = read_dataset(shared_data("rbc3"))
    assert ds.source == "labels.csv"
    assert ds.class_counts() == {"normal": 120, "spherocyte": 120, "target_cell": 120}
    keys = group_keys(ds, "source_image")
    assert len(keys) == 360 and len(set(keys)) < 360


def test_group_by_regex_and_errors(demo_data):
    ds = read_dataset(demo_data)
    keys = group_keys(ds, r"regex:^\d{8}")
    assert all(len(k) == 8 for k in keys)
    with pytest.raises(UserError, match="no such column"):
        group_keys(ds, "chip")
    assert group_keys(ds, "cell_line")[0] == ds.records[0].cell_line


def test_16bit_tiff_scaled_linearly_under_rule_none():
    from prompts.normalize import Reading

    data = shared_data("brightfield16")
    path = sorted(data.glob("spheroid/*.tif"))[0]
    raw = np.asarray(Image.open(path)).astype(np.float64)
    img = load_image(path, Reading(normalize="none"))  # the default (percentile) is tested in test_microscopy.py
    assert img.mode == "L" and img.size == (1024, 1024)
    assert np.abs(np.asarray(img) - raw * 255 / 65535).max() <= 0.5 + 1e-9


def test_modes_and_exif(tmp_path):
    rgba = Image.new("RGBA", (8, 4), (10, 20, 30, 128))
    rgba.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", DEFAULT).mode == "RGB"
    gray_rgb = Image.fromarray(np.stack([np.arange(32, dtype=np.uint8).reshape(4, 8)] * 3, -1))
    gray_rgb.save(tmp_path / "g.png")
    assert is_grayscale(load_image(tmp_path / "g.png", DEFAULT))
    img = Image.new("L", (8, 4), 0)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", DEFAULT).size == (4, 8)


def test_bad_image_named_or_skipped(tmp_path, class_data):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(class_data, root)
    (root / "good" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png.*--skip-bad-images"):
        read_dataset(root, check_images=True)
    ds = read_dataset(root, skip_bad_images=True)
    assert ds.skipped == ["good/broken.png"] and len(ds.records) == 12


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "good").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        read_dataset(tmp_path / "empty")


def test_templates_default_and_user_file(tmp_path):
    tpl = load_templates()
    p = tpl.for_group("good", "HUVEC")
    assert p.group == "HUVEC__good" and p.trigger in p.prompt and "HUVEC" in p.prompt
    assert tpl.for_group("bad").group == "bad"
    f = tmp_path / "t.yaml"
    f.write_text("prompt: '{trigger} photo of {class_text}'\nclasses: {bad: dead cells}\n")
    assert load_templates(f).for_group("bad").prompt == "oocbad photo of dead cells"
    f.write_text("prompt: '{nope}'\n")
    with pytest.raises(UserError, match="unknown field"):
        load_templates(f)


def test_config_validation(tmp_path):
    f = tmp_path / "study.yaml"
    f.write_text("data: {data: imgs}\nlora: {epochs: 3, unet_lr: 1}\n")
    study = load_study(f)
    assert study.lora.epochs == 3 and study.lora.unet_lr == 1.0
    assert study.data.data == str(tmp_path / "imgs")  # relative to the config file
    f.write_text("lora: {epoch: 3}\n")
    with pytest.raises(UserError, match=r"lora\.epoch: unknown key"):
        load_study(f)
    f.write_text("lora: {epochs: three}\n")
    with pytest.raises(UserError, match=r"lora\.epochs: expected an integer"):
        load_study(f)
    f.write_text("trainer: {}\n")
    with pytest.raises(UserError, match="unknown section 'trainer'"):
        load_study(f)
    import argparse

    section = apply_overrides(load_study(None).lora, argparse.Namespace(epochs=4, rank=None))
    assert section.epochs == 4 and section.rank == 8


def test_split_roundtrip_and_mismatch(tmp_path, class_data):
    ds = read_dataset(class_data)
    paths = [r.path for r in ds.records]
    split = Split(str(class_data), 2, 1, 0, None, ds.classes, [
        Fold(0, 0, 0, tuple(paths[::2]), tuple(paths[1::2])),
        Fold(1, 0, 1, tuple(paths[1::2]), tuple(paths[::2])),
    ])
    write_split(tmp_path / "s.json", split)
    back = read_split(tmp_path / "s.json", ds)
    assert back.folds[1].train == split.folds[1].train and back.select("1")[0].name == "fold_1"
    raw = json.loads((tmp_path / "s.json").read_text())
    raw["folds"][0]["test"].append("good/other.png")
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="does not match data folder"):
        read_split(tmp_path / "bad.json", ds)


def test_show_cli(demo_data):
    out = subprocess.run([sys.executable, "-m", "prompts", "show", "--data", str(demo_data)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HUVEC__good" in out.stdout and "negative prompt" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "prompts", "show", "--data", "/nonexistent"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_study_file_reference_documents_the_whole_schema():
    from prompts.config import readme_with_schema

    page = ROOT / "docs" / "reference" / "study-file.md"
    text = page.read_text(encoding="utf-8")
    assert readme_with_schema(text) == text, \
        "docs/reference/study-file.md is stale: run `python -m prompts schema --readme docs/reference/study-file.md`"
