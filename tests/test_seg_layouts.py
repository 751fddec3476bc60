"""The pair layouts labs have, read without renaming: each layout built from the same pairs reads to the same pairs.

The pairs come from real stained cells of ../shared/data/pbc3 (masks by threshold) when that folder is there,
else from blob scenes, so the layouts are checked either way.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from prompts.errors import UserError
from prompts.pair_layouts import PairLayout, layout_of, mask_stem, suggest_rule
from prompts.pairs import load_mask, read_pairs
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit
N = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> list[tuple[Path, Path]]:
    """N (image PNG, mask PNG) pairs: real cells when ../shared/data/pbc3 exists, else blob scenes."""
    from prompts.blobs import make_blob_pairs, write_threshold_pairs

    out = tmp_path_factory.mktemp("src")
    pbc3 = Path(os.environ.get("CELLSYNTH_SHARED_DATA", SHARED_DATA)) / "pbc3"
    if pbc3.is_dir():
        images = sorted((pbc3 / "neutrophil").glob("*.jpg"))[:3] + sorted((pbc3 / "lymphocyte").glob("*.jpg"))[:3]
        data = write_threshold_pairs(images, out / "pairs", size=64)
    else:
        data = make_blob_pairs(out / "pairs", n=N, size=64, seed=3)
    images = sorted((data / "images").iterdir())
    return [(p, data / "masks" / p.name) for p in images]


def _content(pairs) -> set[tuple[str, str]]:
    """What a reading found, independent of names: (image pixels, mask labels) digests."""
    out = set()
    for p in pairs:
        img = np.asarray(Image.open(p.image)) if p.image.suffix != ".tif" else tifffile.imread(p.image)
        out.add((hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest(),
                 hashlib.sha256(load_mask(p.mask).astype(np.int32).tobytes()).hexdigest()))
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".tif":
        arr = np.asarray(Image.open(src))
        tifffile.imwrite(dst, arr.astype(np.uint16) if arr.ndim == 2 else arr)
    else:
        shutil.copy(src, dst)


def _reference(source, tmp_path):
    for i, (img, mask) in enumerate(source):
        _copy(img, tmp_path / "ref" / "images" / f"c{i}.png")
        _copy(mask, tmp_path / "ref" / "masks" / f"c{i}.png")
    return _content(read_pairs(tmp_path / "ref"))


def test_folder_names_and_name_rules(source, tmp_path):
    ref = _reference(source, tmp_path)
    data = tmp_path / "imggt"
    for i, (img, mask) in enumerate(source):
        _copy(img, data / "img" / f"dna-{i}.png")
        _copy(mask, data / "gt" / f"{i}.png")
    for rule in ("{stem[4:]}", r"re:dna-(\d+)=>\1"):
        pairs = read_pairs(data, PairLayout(images="img", masks="gt", mask_name=rule))
        assert len(pairs) == N and _content(pairs) == ref
    with pytest.raises(UserError) as err:  # the folders given, the names not: the rule is suggested
        read_pairs(data, PairLayout(images="img", masks="gt"))
    assert "data.mask_name" in str(err.value) and "'{stem[4:]}'" in str(err.value) and "dna-0.png" in str(err.value)


def test_nothing_pairs_names_the_folders_and_the_key(source, tmp_path):
    data = tmp_path / "imggt"
    for i, (img, mask) in enumerate(source):
        _copy(img, data / "img" / f"{i}.png")
        _copy(mask, data / "gt" / f"{i}.png")
    with pytest.raises(UserError) as err:
        read_pairs(data)
    msg = str(err.value)
    assert "img/" in msg and "gt/" in msg and "data.images_dir: img" in msg and "data.masks_dir: gt" in msg and "img/0.png" in msg


def test_cell_tracking_challenge_layout(source, tmp_path):
    ref = _reference(source, tmp_path)
    data = tmp_path / "ctc"
    for i, (img, mask) in enumerate(source):
        _copy(img, data / "01" / f"t{i:03d}.tif")
        _copy(mask, data / "01_GT" / "SEG" / f"man_seg{i:03d}.tif")
    _copy(source[0][0], data / "01" / "t099.tif")  # a frame without annotation: not a pair (CTC annotates some frames)
    pairs = read_pairs(data)
    assert len(pairs) == N and {p.label for p in pairs} == {"01"} and pairs[0].name == "01/t000.tif"
    assert _content(pairs) == ref  # the TIFF frames hold the same pixels and labels
    assert mask_stem("man_seg{stem[1:]}", "t001") == "man_seg001" and suggest_rule("t01", "man_seg01") == "man_seg{stem[1:]}"


def test_csv_layout_with_class_and_group(source, tmp_path):
    ref = _reference(source, tmp_path)
    data = tmp_path / "csvdata"
    lines = ["image,mask,class,group"]
    for i, (img, mask) in enumerate(source):
        _copy(img, data / "raw" / f"scan {i}.png")
        _copy(mask, data / "labels" / f"L{i}.png")
        lines.append(f"raw/scan {i}.png,labels/L{i}.png,{'a' if i < 3 else 'b'},donor{i % 2}")
    (data / "pairs.csv").write_text("\n".join(lines) + "\n")
    pairs = read_pairs(data, PairLayout(csv="pairs.csv"))
    assert _content(pairs) == ref and {p.label for p in pairs} == {"a", "b"} and {p.group for p in pairs} == {"donor0", "donor1"}
    (data / "bad.csv").write_text("image,mask\n../outside.png,labels/L0.png\n")
    with pytest.raises(UserError, match="not a path inside"):
        read_pairs(data, PairLayout(csv="bad.csv"))


def test_cellpose_names_read_to_the_same_pairs(source, tmp_path):
    ref = _reference(source, tmp_path)
    for i, (img, mask) in enumerate(source):
        _copy(img, tmp_path / "cp" / f"c{i}.png")
        _copy(mask, tmp_path / "cp" / f"c{i}_masks.png")
    assert _content(read_pairs(tmp_path / "cp")) == ref


def test_layout_keys_of_the_data_section():
    from prompts.schema import DataSection

    lay = layout_of(DataSection(data="x", images_dir="img", masks_dir="gt", mask_name="man_seg{stem[1:]}"))
    assert lay == PairLayout("img", "gt", "man_seg{stem[1:]}", None)
    with pytest.raises(UserError, match="data.mask_name"):
        read_pairs(Path(__file__).parent, PairLayout(mask_name="nostem"))


def test_nested_class_folder_is_refused_not_dropped(source, tmp_path):
    for i, (img, mask) in enumerate(source):
        cls = tmp_path / ("cls_a" if i < 3 else "cls_b/sub")
        _copy(img, cls / "images" / f"c{i}.png")
        _copy(mask, cls / "masks" / f"c{i}.png")
    with pytest.raises(UserError) as err:
        read_pairs(tmp_path)
    assert "cls_b/sub/images" in str(err.value) and "nested" in str(err.value)


def test_symlinked_class_folder_is_refused_not_duplicated(source, tmp_path):
    for i, (img, mask) in enumerate(source):
        _copy(img, tmp_path / "cls_a" / "images" / f"c{i}.png")
        _copy(mask, tmp_path / "cls_a" / "masks" / f"c{i}.png")
    (tmp_path / "cls_b").symlink_to(tmp_path / "cls_a", target_is_directory=True)
    with pytest.raises(UserError) as err:
        read_pairs(tmp_path)
    assert "cls_b" in str(err.value) and "symlink" in str(err.value)
