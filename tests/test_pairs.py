"""Image–mask pairs: the layouts labs use, and one line per bad pair."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from prompts.blobs import make_blob_pairs, save_mask_png, threshold_mask, write_threshold_pairs
from prompts.errors import UserError
from prompts.pairs import load_mask, read_pairs
from tests.conftest import shared_data


def _rgb(path, h=20, w=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


def _labels(h=20, w=24, dtype=np.uint16):
    m = np.zeros((h, w), dtype)
    m[2:6, 2:6], m[10:15, 10:18] = 1, 700  # 700 needs 16 bits
    return m


def test_images_and_masks_folders(tmp_path):
    _rgb(tmp_path / "images" / "a.png")
    _rgb(tmp_path / "images" / "b.jpg")
    save_mask_png(tmp_path / "masks" / "a.png", _labels())
    save_mask_png(tmp_path / "masks" / "b_masks.png", _labels())
    pairs = read_pairs(tmp_path)
    assert [(p.name, p.mask.name, p.label) for p in pairs] == [("images/a.png", "a.png", None), ("images/b.jpg", "b_masks.png", None)]
    m = load_mask(pairs[0].mask)
    assert m.dtype == np.int32 and m.shape == (20, 24) and set(np.unique(m)) == {0, 1, 700}


def test_cellpose_names_per_class_tiff(tmp_path):
    for label in ("hela", "u2os"):
        (tmp_path / label).mkdir()
        tifffile.imwrite(tmp_path / label / "x1.tif", np.full((20, 24), 1000, np.uint16))
        tifffile.imwrite(tmp_path / label / "x1_masks.tif", _labels())
        tifffile.imwrite(tmp_path / label / "x1_flows.tif", np.zeros((20, 24, 3), np.uint8))  # Cellpose side file: ignored
        _rgb(tmp_path / label / "x2.png")
        save_mask_png(tmp_path / label / "x2_cp_masks.png", _labels())
    pairs = read_pairs(tmp_path)
    assert [(p.name, p.label) for p in pairs] == [
        ("hela/x1.tif", "hela"), ("hela/x2.png", "hela"), ("u2os/x1.tif", "u2os"), ("u2os/x2.png", "u2os")]
    assert load_mask(pairs[0].mask).max() == 700


def test_float_mask_with_whole_numbers_is_accepted(tmp_path):
    _rgb(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "masks" / "a.tif", _labels().astype(np.float32))
    (pair,) = read_pairs(tmp_path)
    assert load_mask(pair.mask).dtype == np.int32


def test_every_bad_pair_is_one_line(tmp_path):
    for name in ("ok", "nomask", "small", "float", "rgb"):
        _rgb(tmp_path / "images" / f"{name}.png")
    save_mask_png(tmp_path / "masks" / "ok.png", _labels())
    save_mask_png(tmp_path / "masks" / "small.png", _labels(10, 12))
    tifffile.imwrite(tmp_path / "masks" / "float.tif", _labels().astype(np.float32) + 0.5)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "masks" / "rgb.png")
    save_mask_png(tmp_path / "masks" / "orphan.png", _labels())
    with pytest.raises(UserError) as err:
        read_pairs(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("5 bad image–mask pair(s)")
    body = "\n".join(lines[1:])
    assert len(lines) == 6
    assert "images/nomask.png: no mask" in body
    assert "masks/orphan.png: mask without an image" in body
    assert "images/small.png: image is 24x20 px but its mask masks/small.png is 12x10 px" in body
    assert "masks/float.tif: mask is not integer" in body
    assert "masks/rgb.png: mask has shape (20, 24, 3)" in body


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image–mask pairs"):
        read_pairs(tmp_path / "empty")


def test_blob_pairs_are_deterministic_instance_masks(tmp_path):
    a = make_blob_pairs(tmp_path / "a", n=3, size=48, seed=5)
    b = make_blob_pairs(tmp_path / "b", n=2, size=48, seed=5)
    pa, pb = read_pairs(a), read_pairs(b)
    assert len(pa) == 3
    for x, y in zip(pa, pb):
        assert x.image.read_bytes() == y.image.read_bytes() and x.mask.read_bytes() == y.mask.read_bytes()
    assert Image.open(pa[0].mask).mode in ("I;16", "I;16B", "I")  # 16-bit labels
    m = load_mask(pa[0].mask)
    ids = np.unique(m)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, m.max() + 1)) and m.max() >= 3
    rgb = np.asarray(Image.open(pa[0].image).convert("RGB"), np.float32)
    assert rgb[m > 0].mean() < rgb[m == 0].mean() - 40  # stained cells, light background


def test_threshold_pairs_from_real_stained_cells(tmp_path):
    data = shared_data("pbc3")
    files = sorted(data.glob("*/*.jpg"))[::60]
    out = write_threshold_pairs(files, tmp_path / "pairs", size=64)
    pairs = read_pairs(out)
    assert len(pairs) == len(files)
    for p in pairs:
        m = load_mask(p.mask)
        assert m.shape == (64, 64) and m.max() >= 1
        assert 0.02 < (m > 0).mean() < 0.9  # a cell, not the whole field


def test_threshold_mask_separates_two_dark_discs():
    rgb = np.full((40, 40, 3), 230, np.uint8)
    yy, xx = np.mgrid[0:40, 0:40]
    rgb[(yy - 10) ** 2 + (xx - 10) ** 2 < 25] = 60
    rgb[(yy - 28) ** 2 + (xx - 28) ** 2 < 36] = 60
    m = threshold_mask(rgb, min_area=10)
    assert m.max() == 2 and m[10, 10] != m[28, 28] and m[0, 0] == 0
