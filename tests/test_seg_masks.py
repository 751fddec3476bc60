"""Masks read right: binary masks become cells, 16-bit ids are kept, JPEG masks are refused (one line, exit 2)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image

from prompts.errors import UserError
from prompts.masks import binary_to_instances, decide_kind, read_mask
from prompts.pairs import load_mask, read_pairs

pytestmark = pytest.mark.unit


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _blobs(shape=(64, 80), centres=((12, 12), (12, 50), (40, 20), (45, 60), (30, 35))):
    fg = np.zeros(shape, bool)
    for cy, cx in centres:
        fg |= _disc(shape, cy, cx, 5)
    return fg, len(centres)


def _rgb(path, shape):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(path)


def _binary_pair_folder(root, value=255):
    fg, k = _blobs()
    _rgb(root / "images" / "a.png", fg.shape)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray((fg * value).astype(np.uint8)).save(root / "masks" / "a.png")
    return k


@pytest.mark.parametrize("value", [255, 1])
def test_binary_mask_of_k_blobs_reads_as_k_cells(tmp_path, value):
    k = _binary_pair_folder(tmp_path, value)
    read = read_mask(tmp_path / "masks" / "a.png")
    assert read.kind == "binary" and read.objects == k and read.bits == 8
    assert load_mask(tmp_path / "masks" / "a.png").max() == k
    # read as instance on purpose: one "cell" of id 255 (the old, wrong reading)
    assert read_mask(tmp_path / "masks" / "a.png", "instance").objects == 1


def test_touching_nuclei_are_split_and_an_elongated_cell_is_not():
    shape = (40, 60)
    two = _disc(shape, 20, 20, 8) | _disc(shape, 20, 33, 8)  # overlap of 3 px: a neck
    assert binary_to_instances(two).max() == 2
    rod = np.zeros(shape, bool)
    rod[15:23, 5:55] = True  # a 50 x 8 px rod: its ridge is one maximum
    assert binary_to_instances(rod).max() == 1


def test_auto_decides_per_file():
    assert decide_kind(np.array([255])) == "binary"
    assert decide_kind(np.array([1, 2, 3])) == "instance"
    assert decide_kind(np.array([255]), "instance") == "instance"
    with pytest.raises(UserError, match="data.masks"):
        decide_kind(np.array([1]), "bogus")


def test_16bit_ids_kept(tmp_path):
    m = np.zeros((30, 30), np.uint16)
    m[2:8, 2:8], m[12:20, 12:20], m[22:28, 2:9] = 7, 40000, 65535
    tifffile.imwrite(tmp_path / "m.tif", m)
    read = read_mask(tmp_path / "m.tif")
    assert read.kind == "instance" and read.bits == 16
    assert set(np.unique(read.labels)) == {0, 7, 40000, 65535}


def test_jpeg_mask_refused_in_read_pairs(tmp_path):
    fg, _ = _blobs()
    _rgb(tmp_path / "images" / "a.png", fg.shape)
    (tmp_path / "masks").mkdir()
    Image.fromarray((fg * 255).astype(np.uint8)).save(tmp_path / "masks" / "a.jpg")
    with pytest.raises(UserError, match="JPEG") as err:
        read_pairs(tmp_path)
    assert "masks/a.jpg" in str(err.value)
    with pytest.raises(UserError, match="PNG or TIFF"):
        read_mask(tmp_path / "masks" / "a.jpg")


def test_jpeg_mask_one_line_exit_2_from_segment_cv(tmp_path):
    fg, _ = _blobs()
    data = tmp_path / "data"
    for i in range(4):
        _rgb(data / "images" / f"a{i}.png", fg.shape)
        (data / "masks").mkdir(exist_ok=True)
        Image.fromarray((fg * 255).astype(np.uint8)).save(data / "masks" / f"a{i}.jpg")
    proc = subprocess.run([sys.executable, "-m", "segment", "cv", "--data", str(data), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "JPEG" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_binary_masks_give_k_objects_in_cv_scoring_and_in_controlnet_conditions(tmp_path):
    from controlnet.sample import plan_conditions
    from segment.metrics import score_set
    from segment.pixels import load_mask_native

    k = _binary_pair_folder(tmp_path)
    pair = read_pairs(tmp_path)[0]
    truth = load_mask_native(pair.mask)
    scores = score_set([(truth, truth)])
    assert scores["n_true"] == k and scores["ap50"] == 1.0
    cfg = SimpleNamespace(size=64, augment=True, densities=[], count=1, seed=0, elastic_alpha=0.0, elastic_sigma=4.0)
    (job,) = plan_conditions(cfg, None, [pair])
    assert int(job.mask.max()) >= k - 1  # centre-cropped to 64 px: at most one border blob cut away
    assert int(job.mask.max()) > 1


def test_prompts_show_knows_pair_data_and_bits_per_file_kind(tmp_path, capsys):
    from prompts.__main__ import main

    fg, k = _blobs()
    _rgb(tmp_path / "images" / "a.png", fg.shape)  # 8-bit image
    tifffile.imwrite(tmp_path / "images" / "b.tif", (fg * 3000).astype(np.uint16))  # 16-bit image using 12 bits
    (tmp_path / "masks").mkdir()
    Image.fromarray((fg * 255).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    lab = np.zeros(fg.shape, np.uint16)
    lab[fg] = 1
    lab[:, 40:][fg[:, 40:]] = 2
    tifffile.imwrite(tmp_path / "masks" / "b.tif", lab)
    main(["show", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    assert "2 image–mask pairs" in out and "binary 1, instance 1" in out
    assert "7 of 8 bits; 12 of 16 bits" in out and "16 of 8" not in out  # the RGB image holds 90: 7 bits
    assert f"{2}/" in out and f"/{k}" in out  # objects per image: 2 (instance ids) .. k (binary blobs)
