"""Images as they come off the microscope: OME-TIFF, OME-Zarr, multi-page 16-bit TIFF, scenes, channels, z, t.

The files are written here with the field's own writers (tifffile, bioio-ome-zarr), then read by the
one decoder (`prompts.images`) under the `data` section's rule (`prompts.normalize`), by
`prompts show`, and end to end by classify split, lora train, generate (img2img) and classify cv.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts.errors import UserError
from prompts.normalize import Reading, fit_levels, scale

from .conftest import ROOT, shared_data
from .helpers import run_command

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("bioio")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "USE_TF": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
       "TF_CPP_MIN_LOG_LEVEL": "3"}
NAMES = ["DAPI", "GFP", "RFP"]


# --------------------------------------------------------------------------- writers

def blobs(seed: int, channels: int = 3, z: int = 3, size: int = 64, top: int = 4095) -> np.ndarray:
    """(C, Z, Y, X) uint16 fluorescence-like blobs on a dim background, values up to `top` (12-bit by default)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((channels, z, size, size), np.uint16)
    for c in range(channels):
        for k in range(z):
            img = rng.normal(0.08, 0.01, (size, size))
            for _ in range(4):
                cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 7)]
                img += (0.5 + 0.4 * k / max(1, z - 1)) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            out[c, k] = np.clip(img / img.max() * top * rng.uniform(0.6, 1.0), 0, top).astype(np.uint16)
    return out


def write_ome_tiff(path: Path, stack: np.ndarray, names=NAMES) -> Path:
    tifffile.imwrite(path, stack, metadata={"axes": "CZYX", "Channel": {"Name": list(names[: stack.shape[0]])}}, ome=True)
    return path


def write_two_scenes(path: Path, a: np.ndarray, b: np.ndarray) -> Path:
    with tifffile.TiffWriter(path, ome=True) as w:
        for stack in (a, b):
            w.write(stack, metadata={"axes": "CZYX", "Channel": {"Name": NAMES[: stack.shape[0]]}})
    return path


def write_ome_zarr(path: Path, stack: np.ndarray, names=NAMES) -> Path:
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    data = stack[None]  # T C Z Y X
    colors = ["0000FF", "00FF00", "FF0000"]
    w = OMEZarrWriter(str(path), level_shapes=[data.shape], dtype=data.dtype, axes_names=["t", "c", "z", "y", "x"],
                      channels=[Channel(label=n, color=c) for n, c in zip(names, colors)][: stack.shape[0]])
    w.write_full_volume(data)
    return path


def write_lab_data(root: Path) -> Path:
    """DATA/a: 2 OME-TIFF z-stacks (3 named channels, 12-bit in 16), 1 multi-page 16-bit TIFF, 1 two-scene OME-TIFF;
    DATA/b: 3 OME-Zarr z-stacks (3 named channels), 1 two-scene OME-TIFF. 5 images per class."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    for i in range(2):
        write_ome_tiff(root / "a" / f"cells_{i}.ome.tif", blobs(i))
    pages = blobs(10, channels=1, z=4, top=65535)[0]  # (Z, Y, X): four pages
    tifffile.imwrite(root / "a" / "stack16.tif", pages)
    write_two_scenes(root / "a" / "plate.ome.tif", blobs(20), blobs(21))
    for i in range(3):
        write_ome_zarr(root / "b" / f"well_{i}.ome.zarr", blobs(30 + i))
    write_two_scenes(root / "b" / "plate.ome.tif", blobs(40), blobs(41))
    return root


@pytest.fixture(scope="module")
def lab_data(tmp_path_factory) -> Path:
    return write_lab_data(tmp_path_factory.mktemp("lab") / "data")


# --------------------------------------------------------------------------- the percentile rule

def test_percentile_rule_against_hand_values():
    x = np.arange(101, dtype=np.uint16)  # numpy's linear percentile of 0..100 is q itself
    from prompts.normalize import percentile_levels, to_8bit

    assert percentile_levels(x, 1, 99.8) == pytest.approx((1.0, 99.8))
    out = to_8bit(x.reshape(1, -1), Reading()).ravel()
    # (x - 1) / 98.8 clipped, x 255, rounded: 0 -> 0, 1 -> 0, 50 -> 126.47, 99 -> 252.94, 100 -> 255
    assert [int(out[i]) for i in (0, 1, 50, 99, 100)] == [0, 0, 126, 253, 255]


def test_percentile_rule_against_csbdeep():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 300.0, (64, 48)).astype(np.uint16)
    ours = scale(x, *np.percentile(x, [1, 99.8]))
    try:
        from csbdeep.utils import normalize
    except ImportError:  # the published formula (csbdeep.utils.normalize_mi_ma), written out
        lo, hi = np.percentile(x, [1, 99.8])
        ref = np.clip((x.astype(np.float64) - lo) / (hi - lo + 1e-20), 0, 1)
    else:
        ref = normalize(x, 1, 99.8, clip=True, dtype=np.float64)
    assert np.array_equal(ours, np.rint(ref * 255).astype(np.uint8))


def test_8bit_inputs_stay_bit_identical_under_every_rule(tmp_path):
    from prompts.images import load_image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(gray).save(tmp_path / "g.tif")
    Image.fromarray(np.stack([gray, gray[::-1], gray[:, ::-1]], -1)).save(tmp_path / "c.bmp")
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=90)
    for name in ("g.png", "g.tif", "c.bmp", "g.jpg"):
        with Image.open(tmp_path / name) as im:
            before = np.asarray(im.convert("RGB" if im.mode == "RGB" else "L"))
        for rule in ("percentile", "percentile-dataset", "minmax", "none"):
            assert np.array_equal(np.asarray(load_image(tmp_path / name, Reading(normalize=rule))), before), (name, rule)


def test_12bit_in_16_is_not_black_and_rule_none_is_the_old_scaling(tmp_path):
    from prompts.images import load_image

    stack = blobs(1, channels=1, z=1)  # values up to 4095 in uint16
    path = tifffile.imwrite(tmp_path / "x.tif", stack[0, 0]) or tmp_path / "x.tif"
    old = np.asarray(load_image(path, Reading(normalize="none")))
    new = np.asarray(load_image(path, Reading()))
    assert old.max() <= 16  # 4095 * 255 / 65535: almost black, which is what the percentile rule fixes
    assert new.max() == 255 and new.min() == 0
    assert np.array_equal(new, scale(stack[0, 0], *np.percentile(stack[0, 0], [1, 99.8])))
    mm = np.asarray(load_image(path, Reading(normalize="minmax")))
    assert mm.max() == 255 and mm.min() == 0


def test_16bit_rgb_tiff_is_normalised_per_channel(tmp_path):
    from prompts.images import load_image

    rgb = np.moveaxis(blobs(4, channels=3, z=1)[:, 0], 0, -1)  # Y X S, 12-bit values
    rgb[..., 2] //= 16  # a dim blue channel stays visible after its own stretch
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    img = np.asarray(load_image(tmp_path / "rgb16.tif", Reading()))
    assert img.shape == rgb.shape
    for c in range(3):
        assert np.array_equal(img[..., c], scale(rgb[..., c], *np.percentile(rgb[..., c], [1, 99.8])))


def test_real_16bit_brightfield_uses_the_full_range():
    from prompts.images import load_image

    path = sorted(shared_data("brightfield16").glob("*/*.tif"))[0]
    raw = np.asarray(Image.open(path))
    img = np.asarray(load_image(path, Reading()))
    assert img.shape == raw.shape and img.dtype == np.uint8
    assert np.array_equal(img, scale(raw, *np.percentile(raw, [1, 99.8])))


def test_histogram_percentiles_and_lookup_table_equal_numpy_exactly():
    from prompts.normalize import _scale_values, percentile_levels

    rng = np.random.default_rng(11)
    for n, top in ((1, 4095), (7, 255), (999, 4095), (5000, 65535), (100_000, 4095)):
        x = rng.integers(0, top + 1, n).astype(np.uint8 if top == 255 else np.uint16)
        for q in (0, 1, 2.5, 50, 99.8, 100, float(rng.uniform(0, 100))):
            assert percentile_levels(x, q, q)[0] == float(np.percentile(x, q)), (n, q)  # the same float, not just close
        lo, hi = np.percentile(x, [1, 99.8])
        assert np.array_equal(scale(x, lo, hi), _scale_values(x, lo, hi))


def test_dataset_percentiles_pool_every_pixel_exactly():
    rng = np.random.default_rng(5)
    images = [[rng.integers(0, 4096, (17, 13), dtype=np.uint16)] for _ in range(3)]
    pooled = np.concatenate([im[0].ravel() for im in images])
    (lo, hi), = fit_levels(images, 1, 99.8)
    assert (lo, hi) == tuple(np.percentile(pooled, [1, 99.8]))
    floats = [[im[0].astype(np.float32) / 4095] for im in images]
    (flo, fhi), = fit_levels(floats, 2, 98)
    assert (flo, fhi) == pytest.approx(tuple(np.percentile(np.concatenate([f[0].ravel() for f in floats]), [2, 98])), rel=1e-6)


def test_percentile_dataset_keeps_brightness_differences(tmp_path):
    from prompts.images import fit_reading, load_image

    dim, bright = blobs(2, 1, 1, top=1000)[0, 0], blobs(2, 1, 1, top=4000)[0, 0]
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    tifffile.imwrite(tmp_path / "bright.tif", bright)
    reading = fit_reading([tmp_path / "dim.tif", tmp_path / "bright.tif"], Reading(normalize="percentile-dataset"))
    a, b = (np.asarray(load_image(tmp_path / n, reading)).mean() for n in ("dim.tif", "bright.tif"))
    assert b > 2 * a  # one pair of levels for both: the bright image stays brighter
    per_image = [np.asarray(load_image(tmp_path / n, Reading())).mean() for n in ("dim.tif", "bright.tif")]
    assert abs(per_image[0] - per_image[1]) < 5  # per image, both are stretched alike
    with pytest.raises(UserError, match="percentile-dataset"):
        load_image(tmp_path / "dim.tif", Reading(normalize="percentile-dataset"))  # no levels fitted: said, not guessed


# --------------------------------------------------------------------------- channels, planes, scenes, time

def test_named_channels_compose_and_z_rules(tmp_path):
    from prompts.images import load_image

    stack = blobs(7)  # C Z Y X, channels DAPI GFP RFP
    write_ome_tiff(tmp_path / "f.ome.tif", stack)
    write_ome_zarr(tmp_path / "f.ome.zarr", stack)
    for path in (tmp_path / "f.ome.tif", tmp_path / "f.ome.zarr"):
        rgb = np.asarray(load_image(path, Reading(channels=("GFP", "DAPI"))))
        assert rgb.shape == (64, 64, 3) and not rgb[..., 2].any()  # two channels: red and green, blue empty
        assert np.array_equal(rgb[..., 0], scale(stack[1].max(0), *np.percentile(stack[1].max(0), [1, 99.8])))
        assert np.array_equal(rgb[..., 1], scale(stack[0].max(0), *np.percentile(stack[0].max(0), [1, 99.8])))
        gray = np.asarray(load_image(path, Reading(channels=(2,), z="middle", normalize="none")))
        assert gray.ndim == 2 and np.array_equal(gray, np.rint(stack[2, 1] * (255 / 65535)).astype(np.uint8))
        plane0 = np.asarray(load_image(path, Reading(channels=("RFP",), z=0, normalize="minmax")))
        assert np.array_equal(plane0, scale(stack[2, 0], stack[2, 0].min(), stack[2, 0].max()))
        assert np.asarray(load_image(path, Reading())).shape == (64, 64, 3)  # three channels as stored: RGB


def test_time_points_each_and_by_index(tmp_path):
    from prompts.images import image_names, load_image

    movie = np.stack([blobs(s, channels=1, z=1)[:, 0] for s in range(3)])  # T C Y X
    tifffile.imwrite(tmp_path / "m.ome.tif", movie, metadata={"axes": "TCYX"}, ome=True)
    assert image_names(tmp_path / "m.ome.tif", "m.ome.tif", Reading()) == ["m.ome.tif"]
    assert image_names(tmp_path / "m.ome.tif", "m.ome.tif", Reading(t="each")) == ["m.ome.tif#t-0", "m.ome.tif#t-1", "m.ome.tif#t-2"]
    t2 = np.asarray(load_image(tmp_path / "m.ome.tif#t-2", Reading()))
    assert np.array_equal(t2, np.asarray(load_image(tmp_path / "m.ome.tif", Reading(t=2))))
    assert np.array_equal(t2, scale(movie[2, 0], *np.percentile(movie[2, 0], [1, 99.8])))
    with pytest.raises(UserError, match=r"m.ome.tif: data.t 5 is out of range: the file has t-size 3"):
        load_image(tmp_path / "m.ome.tif", Reading(t=5))


def test_scenes_are_images_with_stable_names(lab_data):
    from prompts.dataset import read_dataset
    from prompts.fingerprint import file_sha256
    from prompts.images import load_image

    ds = read_dataset(lab_data)
    paths = [r.path for r in ds.records]
    assert "a/plate.ome.tif#scene-1" in paths and "a/plate.ome.tif#scene-2" in paths
    assert "b/well_0.ome.zarr" in paths and ds.class_counts() == {"a": 5, "b": 5}
    assert paths == [r.path for r in read_dataset(lab_data).records]  # stable
    s1, s2 = (np.asarray(load_image(lab_data / "a" / f"plate.ome.tif#scene-{k}", Reading())) for k in (1, 2))
    assert not np.array_equal(s1, s2)
    h1, h2 = file_sha256(lab_data / "a/plate.ome.tif#scene-1"), file_sha256(lab_data / "a/plate.ome.tif#scene-2")
    assert h1 != h2 and h1 == file_sha256(lab_data / "a/plate.ome.tif#scene-1")
    with pytest.raises(UserError, match=r"plate.ome.tif#scene-3: no such scene; the file has 2 scene\(s\)"):
        load_image(lab_data / "a" / "plate.ome.tif#scene-3", Reading())


def test_reading_rule_is_in_fingerprints_and_the_workflow_digests(lab_data, tmp_path):
    from classify.features import image_key
    from prompts import fingerprint

    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    tif = lab_data / "a" / "cells_0.ome.tif"
    default, minmax = Reading(), Reading(normalize="minmax")
    default_key, png_key, part = image_key(tif, default), image_key(png, default), fingerprint.reading_part(default)
    assert image_key(tif, minmax) != default_key  # the classifier's feature cache never mixes rules
    assert image_key(png, minmax) == png_key  # 8-bit: read as is under every rule
    assert fingerprint.reading_part(minmax) != part and fingerprint.reading_part(minmax)["normalize"] == "minmax"
    from study import plan as studyplan

    study = tmp_path / "study.yaml"
    digests = []
    for rule in ("percentile", "minmax"):
        study.write_text(f"study: {{output: out}}\ndata: {{data: {lab_data}, normalize: {rule}}}\nlora: {{model: tiny}}\n")
        plan = studyplan.load(study)
        digests.append(plan.settings)
        assert str(lab_data / "a" / "plate.ome.tif") in plan.images and not any("#" in p for p in plan.images)
    assert all(digests[0][k] != digests[1][k] for k in ("lora", "generate", "cv"))


# --------------------------------------------------------------------------- prompts show and bad inputs

def run_cli(*args, timeout=None):
    """`python -m PACKAGE ARGS` run in this process (tests.helpers.run_command): exit status, stdout, stderr (no timeout)."""
    assert args[0] == "-m", args
    return run_command(*args[1:])


def test_show_lists_what_was_read_and_writes_a_contact_sheet(lab_data, tmp_path):
    sheet = tmp_path / "sheet.png"
    r = run_cli("-m", "prompts", "show", "--data", lab_data, "--sheet", sheet, "--sheet-images", 3)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "reading: percentile 1-99.8 per image, clipped (8-bit data as is)" in out
    assert "OME-TIFF" in out and "OME-Zarr" in out and "TIF" in out
    assert "uint16" in out and "12 of 16 bits" in out and "DAPI, GFP, RFP" in out and "T1 C3 Z3 64x64" in out
    with Image.open(sheet) as im:
        assert im.mode == "RGB" and im.height == 2 * (128 + 4)
    inside = run_cli("-m", "prompts", "show", "--data", lab_data, "--sheet", lab_data / "sheet.png")
    assert inside.returncode == 2 and "inside the data folder" in inside.stderr and not (lab_data / "sheet.png").exists()


def _bad_czi(root: Path) -> str:
    import importlib.util

    if importlib.util.find_spec("bioio_czi") is not None:
        pytest.skip("bioio-czi is installed: the missing-plugin message cannot show")
    (root / "a" / "scan.czi").write_bytes(b"ZISRAWFILE not really")
    return "scan.czi: .czi files need the bioio-czi plugin; install it with: pip install 'cellsynth[microscopy]'"


def _empty_zarr(root: Path) -> str:
    import zarr

    zarr.open_group(root / "a" / "empty.ome.zarr", mode="w", zarr_format=3).attrs["ome"] = {"version": "0.5", "multiscales": []}
    return "empty.ome.zarr holds no scenes"


@pytest.mark.parametrize("case", ["plugin", "channel", "z", "scenes"])
def test_bad_inputs_are_one_line_exit_2_nothing_written(case, tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    write_ome_tiff(data / "a" / "x.ome.tif", blobs(0))
    write_ome_tiff(data / "b" / "y.ome.tif", blobs(1))
    flags, needle = {
        "plugin": ([], _bad_czi(data) if case == "plugin" else ""),
        "channel": (["--channels", "DAPI,Cy5"], "data.channels has no channel named 'Cy5' (channels DAPI, GFP, RFP; z-size 3; "
                                               "t-size 1; scenes 1)"),
        "z": (["--z", "7"], "data.z 7 is out of range (channels DAPI, GFP, RFP; z-size 3; t-size 1; scenes 1); use 0..2"),
        "scenes": ([], _empty_zarr(data) if case == "scenes" else ""),
    }[case]
    sheet = tmp_path / "sheet.png"
    r = run_cli("-m", "prompts", "show", "--data", data, "--sheet", sheet, *flags)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not sheet.exists()
    if case in ("plugin", "scenes"):  # found while the data folder is read: every command says it before writing
        split = tmp_path / "split.json"
        r = run_cli("-m", "classify", "split", "--data", data, "--output", split, "--folds", 2, *flags)
        assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1] and not split.exists(), r.stderr


def test_bad_reading_keys_in_the_study_file(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("study: {output: out}\ndata: {data: d, z: top, t: all, percentiles: [99, 1]}\nlora: {model: tiny}\n")
    r = run_cli("-m", "prompts", "check", study)
    assert r.returncode == 2 and "data.percentiles" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the tools end to end

@pytest.mark.slow
def test_split_lora_generate_and_cv_on_lab_files(lab_data, tiny_model, tmp_path):
    pytest.importorskip("keras")
    pytest.importorskip("diffusers")
    study = tmp_path / "study.yaml"
    study.write_text(f"""\
data: {{data: {lab_data}, normalize: percentile, z: max}}
lora: {{model: {tiny_model}, per: class, epochs: 1, repeats: 1, batch_size: 2, resolution: 64, rank: 4, validation_images: 0}}
generate: {{steps: 2, size: [32, 32], lora_weights: [1.0], fraction: [0.5], init_images: real, strength: [0.5], seed: 0}}
classify: {{folds: 2, backbone: EfficientNetB0, weights: none, image_size: 32, epochs: 1, augment: false, mixes: [real]}}
""")
    split = tmp_path / "split.json"
    r = run_cli("-m", "classify", "split", "--config", study, "--output", split)
    assert r.returncode == 0, r.stderr
    listed = {p for fold in json.loads(split.read_text())["folds"] for p in (*fold["train"], *fold["test"])}
    assert {"a/plate.ome.tif#scene-2", "b/well_2.ome.zarr", "a/stack16.tif"} <= listed

    loras = tmp_path / "loras"
    r = run_cli("-m", "lora", "train", "--config", study, "--split", split, "--fold", 0, "--output", loras)
    assert r.returncode == 0, r.stderr[-3000:]
    fp = json.loads((loras / "fold_0" / "a" / "fingerprint.json").read_text())
    assert fp["reading"]["normalize"] == "percentile" and any("#scene-" in k or ".ome" in k for k in fp["images"])

    again = run_cli("-m", "lora", "train", "--config", study, "--split", split, "--fold", 0, "--output", loras, "--normalize", "minmax")
    assert again.returncode == 2 and "reading" in again.stderr, again.stderr[-2000:]  # a changed rule is named, not reused

    syn = tmp_path / "syn"
    r = run_cli("-m", "generate", "--config", study, "--lora", loras, "--split", split, "--fold", 0, "--output", syn,
                "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (syn / "manifest.jsonl").read_text().splitlines()]
    train0 = set(json.loads(split.read_text())["folds"][0]["train"])
    assert records and all(rec["mode"] == "img2img" and rec["init_image"] in train0 for rec in records)
    assert all(rec["reading"]["normalize"] == "percentile" for rec in records)  # how the init image was read
    with Image.open(syn / records[0]["file"]) as im:
        assert im.mode in ("RGB", "L") and im.size == (32, 32)  # synthetic images stay 8-bit PNG

    cv = tmp_path / "cv"
    r = run_cli("-m", "classify", "cv", "--config", study, "--split", split, "--output", cv, "--no-progress",
                "--cache-dir", tmp_path / "cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(cv.rglob("*.json"))


def test_percentile_dataset_levels_come_from_the_folds_training_images(lab_data, tiny_model, tmp_path):
    pytest.importorskip("torch")
    from lora.train import plan
    from prompts.config import load_study
    from prompts.images import fit_reading
    from prompts.splits import read_split

    r = run_cli("-m", "classify", "split", "--data", lab_data, "--output", tmp_path / "split.json", "--folds", 2)
    assert r.returncode == 0, r.stderr
    study = tmp_path / "s.yaml"
    study.write_text(f"data: {{data: {lab_data}, split: {tmp_path / 'split.json'}, normalize: percentile-dataset}}\n"
                     f"lora: {{model: {tiny_model}, output: {tmp_path / 'out'}, fold: all, per: class}}\n")
    s = load_study(study)
    jobs = plan(s.lora, s.data)  # the rule comes from s.data alone: nothing process-wide to set
    from prompts.dataset import read_dataset

    ds = read_dataset(lab_data)
    split = read_split(tmp_path / "split.json", ds)
    for fold in split.folds:
        want = fit_reading([ds.abspath(p) for p in fold.train], Reading(normalize="percentile-dataset")).levels
        fold_jobs = [j for j in jobs if j.fold == fold.index]
        assert fold_jobs and all(j.reading.levels == want for j in fold_jobs)  # every class of the fold: one set of levels
        assert all(j.fingerprint["reading"]["levels"] == [list(lv) for lv in want] for j in fold_jobs)
    assert jobs[0].fingerprint["parts"]["reading"] != [j for j in jobs if j.fold != jobs[0].fold][0].fingerprint["parts"]["reading"]
    r = run_cli("-m", "classify", "cv", "--data", lab_data, "--split", tmp_path / "split.json", "--output", tmp_path / "cv",
                "--normalize", "percentile-dataset")
    assert r.returncode == 2 and "percentile-dataset is applied by lora train only" in r.stderr and not (tmp_path / "cv").exists()


def test_workflow_plans_a_study_of_lab_files(lab_data, tmp_path):
    """Snakemake's dry run of a whole study on lab files: the plan reads scenes and zarr folders, tracks the files."""
    snakemake = Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():
        pytest.skip("snakemake is not installed")
    (tmp_path / "study.yaml").write_text(f"""\
study: {{output: out}}
data: {{data: {lab_data}, normalize: percentile, z: middle}}
lora: {{model: tiny, per: class, epochs: 1, resolution: 64}}
generate: {{steps: 2, size: [32, 32], lora_weights: [1.0], fraction: [0.5], init_images: real}}
classify: {{folds: 2, backbone: EfficientNetB0, weights: none, image_size: 32, epochs: 1, mixes: [real, real+50]}}
""")
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([str(snakemake), "-s", str(ROOT / "workflow" / "Snakefile"), "--configfile", "study.yaml", "-n"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not (tmp_path / "out" / "folds.json").exists()  # a dry run writes nothing
    from prompts.dataset import read_dataset

    from .studies import job_counts

    classes = len(read_dataset(lab_data).classes)  # scenes and zarr folders are images of their class
    folds, weights = 2, 1
    assert job_counts(r.stdout + r.stderr) == {
        "default_templates": 1, "tiny_model": 1, "split": 1, "lora": folds * classes, "generate": folds * weights, "synthetic_manifest": 1,
        "realism": 1, "publish_realism": 1, "cv": 1, "publish_report": 1, "all": 1}
