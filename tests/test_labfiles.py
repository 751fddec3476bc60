"""Lab files are read right or refused: one line naming the file, exit status 2, or skipped and listed
with --skip-bad-images; never read as something else (black, zeros, a traceback, a killed process).

The files are made here with the field's own writers (tifffile, bioio-ome-zarr, Pillow) and then damaged
the way real files are: NaN rows, deleted chunk files, a cut-off download, OME-XML that disagrees with the
pixels, a declared size far beyond memory, links that loop. The five regressions of the lab-file reader
come first.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts.errors import UserError

pytestmark = pytest.mark.unit

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("bioio")

NAMES = ["DAPI", "GFP", "RFP"]
ODD_NAMES = ["new\nline.png", "emoji 🧫🔬.png", "tab\there.png", "hash#1.png", "zwj 👩‍🔬.png"]


# --------------------------------------------------------------------------- writers

def gray(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8))


def stack16(seed: int, channels: int = 3, z: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 4000, (channels, z, size, size)).astype(np.uint16)


def write_ome_tiff(path: Path, stack: np.ndarray, names=NAMES, axes: str = "CZYX") -> Path:
    tifffile.imwrite(path, stack, metadata={"axes": axes, "Channel": {"Name": list(names[: stack.shape[0]])}}, ome=True)
    return path


def write_ome_zarr(path: Path, stack: np.ndarray, chunk: int | None = None, names=NAMES) -> Path:
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    data = stack[None]  # T C Z Y X
    chunks = [(1, 1, 1, chunk, chunk)] if chunk else None
    w = OMEZarrWriter(str(path), level_shapes=[data.shape], dtype=data.dtype, axes_names=["t", "c", "z", "y", "x"],
                      chunk_shape=chunks, channels=[Channel(label=n, color="FFFFFF") for n in names[: stack.shape[0]]])
    w.write_full_volume(data)
    return path


def class_folders(root: Path, per_class: int = 3, classes=("a", "b")) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gray(i + 10 * ord(c)).save(root / c / f"{c}{i}.png")
    return root


def run_main(package: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m <package> argv`, in process."""
    import importlib

    main = importlib.import_module(f"{package}.__main__").main
    try:
        code = main([str(a) for a in argv]) or 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one line:\n{err}"
    return lines[0]


# --------------------------------------------------------------------------- regressions: odd file names

@pytest.mark.parametrize("name", ODD_NAMES + ["plate.czi#scene-2#t-3", "#scene-1.png", ""])
def test_any_file_name_is_a_name(name):
    from prompts.images import image_name, split_name

    base, scene, t = split_name(name)
    assert image_name(base, scene, t) == name
    if name in ODD_NAMES:
        assert (base, scene, t) == (name, None, None)
        assert split_name(f"a/{name}#scene-2") == (f"a/{name}", 2, None)


def test_fragments_are_read_only_at_the_end():
    from prompts.images import split_name

    assert split_name("a/f.czi#scene-2#t-3") == ("a/f.czi", 2, 3)
    assert split_name("a/f\n.czi#t-0") == ("a/f\n.czi", None, 0)
    assert split_name("a/x#scene-2.png") == ("a/x#scene-2.png", None, None)


def test_odd_names_are_read_split_and_decoded(tmp_path, capsys):
    data = class_folders(tmp_path / "data")
    for i, name in enumerate(ODD_NAMES):
        gray(100 + i).save(data / "ab"[i % 2] / name)
    from prompts.dataset import read_dataset
    from prompts.images import load_image

    dataset = read_dataset(data, check_images=True)
    assert {Path(r.path).name for r in dataset.records} >= set(ODD_NAMES)
    assert all(load_image(dataset.abspath(r)).size == (32, 32) for r in dataset.records)
    code, _, err = run_main("classify", ["split", "--data", data, "--folds", "2", "--output", tmp_path / "split.json"], capsys)
    assert code == 0, err
    import json

    folds = json.loads((tmp_path / "split.json").read_text())["folds"]
    assert {Path(p).name for f in folds for p in f["test"]} >= set(ODD_NAMES)


@pytest.mark.slow
def test_odd_names_through_lora_train_generate_and_cv(tmp_path, tiny_model, capsys):
    """The commands the regression broke (split, lora train, cv, generate) run on names with a newline and emoji."""
    pytest.importorskip("diffusers")
    data = class_folders(tmp_path / "data", per_class=3)
    for i, name in enumerate(ODD_NAMES[:2]):
        gray(200 + i).save(data / "ab"[i % 2] / name)
    split = tmp_path / "split.json"
    assert run_main("classify", ["split", "--data", data, "--folds", "2", "--output", split], capsys)[0] == 0
    loras = tmp_path / "loras"
    code, _, err = run_main("lora", ["train", "--model", tiny_model, "--data", data, "--split", split, "--fold", "0",
                                     "--output", loras, "--resolution", "32", "--epochs", "1", "--rank", "4",
                                     "--validation-images", "0"], capsys)
    assert code == 0, err[-2000:]
    code, _, err = run_main("generate", ["--model", tiny_model, "--data", data, "--lora", loras, "--split", split, "--fold", "0",
                                         "--output", tmp_path / "syn", "--size", "32", "32", "--steps", "2", "--count", "1",
                                         "--init-images", "real", "--strength", "0.5", "--no-progress"], capsys)
    assert code == 0, err[-2000:]
    pytest.importorskip("keras")
    code, _, err = run_main("classify", ["cv", "--data", data, "--split", split, "--output", tmp_path / "cv", "--weights", "none",
                                         "--image-size", "32", "--epochs", "1", "--mixes", "real", "--no-progress",
                                         "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0, err[-2000:]


# --------------------------------------------------------------------------- regressions: links that loop

def _file_loop(cls: Path) -> str:
    (cls / "loop.png").symlink_to("loop.png")
    return "loop.png"


def _dangling(cls: Path) -> str:
    (cls / "gone.tif").symlink_to(cls / "never-there.tif")
    return "gone.tif"


def _two_step_loop(cls: Path) -> str:
    (cls / "x.png").symlink_to("y.png")
    (cls / "y.png").symlink_to("x.png")
    return "x.png"


@pytest.mark.parametrize("make", [_file_loop, _dangling, _two_step_loop])
def test_a_link_to_nowhere_in_a_class_folder_is_one_line(tmp_path, capsys, make):
    data = class_folders(tmp_path / "data")
    name = make(data / "a")
    code, out, err = run_main("prompts", ["show", "--data", data], capsys)
    assert code == 2 and name in one_line(err) and "symbolic link" in err


@pytest.mark.parametrize("target", [".", "..", "../b"])
def test_a_folder_link_loop_in_a_class_folder_is_no_traceback(tmp_path, capsys, target):
    data = class_folders(tmp_path / "data")
    (data / "a" / "loop").symlink_to(target)
    code, out, err = run_main("prompts", ["show", "--data", data], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert "same folder" in one_line(err)
    else:
        assert "Traceback" not in err and "a " in out


def test_a_link_to_nowhere_is_skipped_and_listed_with_skip_bad_images(tmp_path, capsys, caplog):
    data = class_folders(tmp_path / "data")
    _file_loop(data / "a")
    study = tmp_path / "study.yaml"
    study.write_text(f"data: {{data: {data}, skip_bad_images: true}}\n")
    with caplog.at_level(logging.WARNING):
        code, out, err = run_main("prompts", ["show", "--config", study], capsys)
    assert code == 0, err
    assert "a/loop.png" in caplog.text and "skipped 1" in caplog.text
