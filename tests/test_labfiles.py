"""Lab files are read right or refused: one line naming the file, exit status 2, or skipped and listed
with --skip-bad-images; never read as something else (black, zeros, a traceback, a killed process).

The files are made here with the field's own writers (tifffile, bioio-ome-zarr, Pillow) and then damaged
the way real files are: NaN rows, deleted chunk files, a cut-off download, OME-XML that disagrees with the
pixels, a declared size far beyond memory, links that loop. The five regressions of the lab-file reader
come first.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompts.errors import UserError
from prompts.normalize import DEFAULT

# unit tier by default (tests/conftest.py); the slow test below marks itself workflow

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
    assert all(load_image(dataset.abspath(r), DEFAULT).size == (32, 32) for r in dataset.records)
    code, _, err = run_main("classify", ["split", "--data", data, "--folds", "2", "--output", tmp_path / "split.json"], capsys)
    assert code == 0, err
    import json

    folds = json.loads((tmp_path / "split.json").read_text())["folds"]
    assert {Path(p).name for f in folds for p in f["test"]} >= set(ODD_NAMES)


@pytest.mark.slow
@pytest.mark.workflow  # minutes: lora train, generate and cv in turn
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


# --------------------------------------------------------------------------- non-finite pixels

def _nan_rows(path: Path) -> int:
    a = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    a[3:6] = np.nan
    a[10] = np.inf
    tifffile.imwrite(path, a)  # one plain page: Pillow (mode F)
    return 4 * 32


def _all_nan(path: Path) -> int:
    tifffile.imwrite(path, np.full((32, 32), np.nan, np.float32))
    return 32 * 32


def _nan_pages(path: Path) -> int:
    a = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    a[1, :, 7] = -np.inf
    tifffile.imwrite(path, a)  # three pages: bioio-tifffile, z max reads every plane
    return 32


def _nan_ome(path: Path) -> int:
    a = np.random.default_rng(2).random((2, 2, 32, 32)).astype(np.float32)
    a[0, 1, 5:7] = np.nan
    write_ome_tiff(path, a)
    return 2 * 32


@pytest.mark.parametrize("make", [_nan_rows, _all_nan, _nan_pages, _nan_ome])
def test_non_finite_pixels_are_refused_with_their_count(tmp_path, make):
    from prompts.images import load_image, raw_planes

    path = tmp_path / f"{make.__name__}.tif"
    count = make(path)
    for read in (load_image, raw_planes):
        with pytest.raises(UserError, match=rf"^{path}: {count} of \d+ pixel values are not finite \(NaN or inf\)"):
            read(path, DEFAULT)


def test_non_finite_values_outside_what_is_read_do_not_matter(tmp_path):
    from prompts.images import load_image
    from prompts.normalize import Reading

    a = np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32)
    a[1] = np.nan  # GFP is all NaN; DAPI is fine
    path = write_ome_tiff(tmp_path / "x.ome.tif", a)
    img = load_image(path, Reading(channels=("DAPI",)))
    assert img.mode == "L" and img.getextrema() == (0, 255)
    with pytest.raises(UserError, match="3072 of 6144 pixel values are not finite"):
        load_image(path, Reading())


def test_non_finite_images_are_skipped_and_listed(tmp_path, caplog):
    from prompts.dataset import read_dataset

    data = class_folders(tmp_path / "data")
    _nan_rows(data / "a" / "nan.tif")
    _nan_ome(data / "b" / "nan.ome.tif")
    with pytest.raises(UserError, match="nan"):
        read_dataset(data, check_images=True)
    with caplog.at_level(logging.WARNING):
        dataset = read_dataset(data, skip_bad_images=True)
    assert sorted(dataset.skipped) == ["a/nan.tif", "b/nan.ome.tif"] and len(dataset.records) == 6
    assert "a/nan.tif" in caplog.text and "b/nan.ome.tif" in caplog.text


# --------------------------------------------------------------------------- OME-Zarr chunk files

def test_missing_zarr_chunks_are_refused(tmp_path, monkeypatch):
    from prompts.images import load_image

    stack = stack16(4, channels=1, z=1, size=64)
    path = write_ome_zarr(tmp_path / "w.ome.zarr", stack, chunk=16)
    assert load_image(path, DEFAULT).size == (64, 64)
    chunk_files = sorted(p for p in (path / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) == 16
    for p in chunk_files[:12]:
        p.unlink()
    with pytest.raises(UserError, match=r"w.ome.zarr: 12 of 16 chunk files of its image data are missing"):
        load_image(path, DEFAULT)
    monkeypatch.setenv("CELLSYNTH_ZARR_MISSING_CHUNKS", "zero")  # a writer that left out empty chunks on purpose
    assert np.asarray(load_image(path, DEFAULT)).min() == 0


# --------------------------------------------------------------------------- damaged and inconsistent OME files

def _truncated(path: Path) -> None:
    write_ome_tiff(path, stack16(5, size=64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _one_pixel(path: Path) -> None:
    write_ome_tiff(path, np.ones((1, 1, 1, 1), np.uint16))


def _xml_more_channels(path: Path) -> None:
    write_ome_tiff(path, stack16(6))
    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata
    tifffile.tiffcomment(path, xml.replace('SizeC="3"', 'SizeC="4"'))


def _xml_more_planes(path: Path) -> None:
    write_ome_tiff(path, stack16(7))
    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata
    tifffile.tiffcomment(path, xml.replace('SizeT="1"', 'SizeT="3"'))  # frames the file does not hold


def _garbage_after_header(path: Path) -> None:
    path.write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 4)


def _pages_cut(path: Path) -> None:
    tifffile.imwrite(path, stack16(8, channels=1, z=4, size=64)[0])  # four pages: bioio-tifffile
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGED = [_truncated, _one_pixel, _xml_more_channels, _xml_more_planes, _garbage_after_header, _pages_cut]


@pytest.mark.parametrize("make", DAMAGED)
def test_a_damaged_lab_file_is_one_line_in_every_reader(tmp_path, make):
    from prompts.images import describe_image, load_image

    path = tmp_path / "bad.ome.tif"
    make(path)
    for read in (lambda p: load_image(p, DEFAULT), describe_image):
        with pytest.raises(UserError) as err:
            read(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("make", DAMAGED)
def test_a_damaged_lab_file_in_prompts_show_is_exit_2_and_skipped_with_the_flag(tmp_path, capsys, caplog, make):
    data = class_folders(tmp_path / "data")
    make(data / "a" / "bad.ome.tif")
    code, _, err = run_main("prompts", ["show", "--data", data], capsys)
    assert code == 2 and "bad.ome.tif" in one_line(err)
    study = tmp_path / "study.yaml"
    study.write_text(f"data: {{data: {data}, skip_bad_images: true}}\n")
    with caplog.at_level(logging.WARNING):
        code, out, err = run_main("prompts", ["show", "--config", study], capsys)
    assert code == 0, err
    assert "a/bad.ome.tif" in caplog.text


def test_a_corrupt_tiff_is_skipped_by_split_with_skip_bad_images(tmp_path, capsys):
    data = class_folders(tmp_path / "data")
    _pages_cut(data / "a" / "cut.tif")
    _garbage_after_header(data / "b" / "garbage.tif")
    from prompts.dataset import read_dataset

    with pytest.raises(UserError, match="cut.tif"):
        read_dataset(data, check_images=True)
    split = tmp_path / "split.json"
    code, _, err = run_main("classify", ["split", "--data", data, "--folds", "2", "--output", split, "--skip-bad-images"], capsys)
    assert code == 0, err
    assert "cut.tif" not in split.read_text() and "garbage.tif" not in split.read_text()


# --------------------------------------------------------------------------- decompression bombs

def _tiles(shape, dtype, count):
    """`count` zlib-compressed zero tiles of 1024x1024: a file of a few MB that declares gigabytes."""
    blob = zlib.compress(np.zeros((1024, 1024), dtype).tobytes(), 9)
    return (blob for _ in range(count))


def _bomb_ome(path: Path) -> None:
    n = 36864  # 36864**2 = 1.36e9 values > 2**30
    tifffile.imwrite(path, _tiles(None, np.uint8, (n // 1024) ** 2), shape=(1, 1, n, n), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib", ome=True, metadata={"axes": "CZYX"})


def _bomb_pages(path: Path) -> None:
    n = 24576  # 2 pages of 24576**2: 1.2e9 values
    tifffile.imwrite(path, _tiles(None, np.uint8, 2 * (n // 1024) ** 2), shape=(2, n, n), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib")


def _bomb_pillow(path: Path) -> None:
    n = 36864
    tifffile.imwrite(path, _tiles(None, np.uint8, (n // 1024) ** 2), shape=(n, n), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib")


@pytest.mark.parametrize("make", [_bomb_ome, _bomb_pages, _bomb_pillow])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, make):
    import resource

    from prompts.images import load_image, raw_planes

    path = tmp_path / "bomb.tif"
    make(path)
    assert path.stat().st_size < 4e6
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for read in (load_image, raw_planes):
        with pytest.raises(UserError, match=r"too large to decode safely.* above the limit of 1,073,741,824.*CELLSYNTH_MAX_PIXELS="):
            read(path, DEFAULT)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing was decoded


@pytest.mark.parametrize("kind", ["png", "tif16", "ome", "pages", "zarr"])
def test_the_pixel_limit_holds_on_every_reader_path_and_can_be_raised(tmp_path, monkeypatch, kind):
    from prompts.images import describe_image, load_image

    path = tmp_path / f"x.{kind}"
    if kind == "png":
        path = tmp_path / "x.png"
        gray(0, size=40).save(path)
    elif kind == "tif16":
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, stack16(0, 1, 1, size=40)[0, 0])
    elif kind == "ome":
        path = write_ome_tiff(tmp_path / "x.ome.tif", stack16(0, size=40))
    elif kind == "pages":
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, stack16(0, 1, 3, size=40)[0])
    else:
        path = write_ome_zarr(tmp_path / "x.zarr", stack16(0, size=40))
    monkeypatch.setenv("CELLSYNTH_MAX_PIXELS", "1000")
    with pytest.raises(UserError, match=rf"image {path} is too large to decode safely.*limit of 1,000"):
        load_image(path, DEFAULT)
    monkeypatch.setenv("CELLSYNTH_MAX_PIXELS", "100_000")
    assert load_image(path, DEFAULT).size == (40, 40)
    assert describe_image(path)["dtype"]
    monkeypatch.setenv("CELLSYNTH_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match="CELLSYNTH_MAX_PIXELS='lots'"):
        load_image(path, DEFAULT)


def test_a_bomb_in_prompts_show_is_one_line_not_a_killed_process(tmp_path, capsys):
    data = class_folders(tmp_path / "data")
    _bomb_ome(data / "a" / "bomb.ome.tif")
    code, _, err = run_main("prompts", ["show", "--data", data], capsys)
    assert code == 2 and "bomb.ome.tif is too large" in one_line(err)


def _damaged_copies(tmp_path: Path, count: int) -> list[Path]:
    """`count` OME-TIFFs and multi-page TIFFs with bytes changed or cut off (seeded): what a bad disk or copy leaves."""
    import io

    rng = np.random.default_rng(0)
    sources = []
    for kw in ({"ome": True, "metadata": {"axes": "CZYX"}}, {"compression": "zlib"}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, stack16(9, channels=2, z=3, size=48) if kw.get("ome") else stack16(9, 1, 3, 48)[0], **kw)
        sources.append(buf.getvalue())
    out = []
    for k in range(count):
        data = bytearray(sources[k % 2])
        if k % 3 == 0:
            data = data[: int(rng.integers(8, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data) if k % 3 == 2 else 400))] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged_{k}{'.ome' if k % 2 == 0 else ''}.tif"
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def test_damaged_tiffs_decode_or_are_one_line_never_a_traceback(tmp_path):
    from prompts.images import check_decodes, describe_image, image_names

    outcomes = {"read": 0, "refused": 0}
    for path in _damaged_copies(tmp_path, 90):
        try:
            image_names(path, path.name, DEFAULT)
            describe_image(path)
            check_decodes(path, DEFAULT)
            outcomes["read"] += 1
        except UserError as err:
            assert path.name in str(err) and "\n" not in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 30, outcomes


def test_damaged_tiffs_are_skipped_with_skip_bad_images(tmp_path, capsys):
    data = class_folders(tmp_path / "data")
    for path in _damaged_copies(tmp_path, 30):
        path.rename(data / "ab"[int(path.stem.split("_")[1].split(".")[0]) % 2] / path.name)
    split = tmp_path / "split.json"
    code, _, err = run_main("classify", ["split", "--data", data, "--folds", "2", "--output", split, "--skip-bad-images"], capsys)
    assert code == 0, err[-3000:]


def test_a_corrupt_compressed_tiff_is_one_line_libtiff_included(tmp_path, capfd):
    """libtiff (inside Pillow) prints its own error on file descriptor 2; the user still sees one line."""
    data = class_folders(tmp_path / "data")
    path = data / "a" / "bad.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        start = tf.pages[0].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    for i in range(start + 10, start + 40):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    from prompts.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["show", "--data", str(data)])
    err = capfd.readouterr().err
    assert stop.value.code == 2 and "bad.tif" in one_line(err)
