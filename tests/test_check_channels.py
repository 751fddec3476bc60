"""The study check knows the lab files' channels and planes: `data.channels`, `z`, `t` and scenes are checked
before any job, from the files' headers, with the line the decoder gives at the first job.

Through `python -m prompts check` and `python -m study.run` (which runs the same check before Snakemake
starts): exit status 2, one line, nothing written in the output folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prompts.errors import UserError

pytestmark = pytest.mark.unit

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("bioio")

NAMES = ["DAPI", "GFP", "RFP"]


def write_ome_tiff(path: Path, seed: int, names=NAMES, z: int = 2, t: int = 1) -> Path:
    data = np.random.default_rng(seed).integers(100, 4000, (t, len(names), z, 32, 32)).astype(np.uint16)
    tifffile.imwrite(path, data, metadata={"axes": "TCZYX", "Channel": {"Name": list(names)}}, ome=True)
    return path


def lab_folder(root: Path, layouts=None, per_class: int = 3) -> Path:
    """DATA/a and DATA/b of OME-TIFFs; layouts: {class: channel names} (default DAPI, GFP, RFP for both)."""
    layouts = layouts or {"a": NAMES, "b": NAMES}
    for k, (label, names) in enumerate(layouts.items()):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            write_ome_tiff(root / label / f"{label}{i}.ome.tif", 10 * k + i, names)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return lab_folder(tmp_path_factory.mktemp("lab") / "data")


def study_file(tmp_path: Path, data: Path, extra: str = "", task: str = "") -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"study: {{output: {tmp_path / 'out'}{task}}}\ndata: {{data: {data}{extra}}}\nlora: {{model: tiny}}\n"
                    "classify: {folds: 2}\nsegment: {folds: 2}\n")
    return path


def check(path: Path, capsys) -> tuple[int, str]:
    from prompts.__main__ import main

    try:
        main(["check", str(path)])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def decoder_line(image: Path, **rule) -> str:
    """What the first job that decodes `image` would say under the rule."""
    from prompts.images import load_image
    from prompts.normalize import Reading

    with pytest.raises(UserError) as err:
        load_image(image, Reading(**rule))
    return str(err.value)


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one line:\n{err}"
    return lines[0]


CASES = {
    "unknown channel name": (", channels: [NOPE]", {"channels": ("NOPE",)}, "no channel named 'NOPE'"),
    "channel index past the end": (", channels: [3]", {"channels": (3,)}, "data.channels 3 is out of range"),
    "z out of range": (", z: 7", {"z": 7}, "data.z 7 is out of range"),
    "t out of range": (", t: 2", {"t": 2}, "data.t 2 is out of range"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_rule_the_files_cannot_meet_is_the_decoders_line_before_any_job(data, tmp_path, capsys, case):
    extra, rule, words = CASES[case]
    study = study_file(tmp_path, data, extra)
    code, err = check(study, capsys)
    line = one_line(err)
    want = decoder_line(data / "a" / "a0.ome.tif", **rule)
    assert code == 2 and words in want and line == f"error: {study.resolve()}: {want}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_the_workflow_entry_refuses_it_before_snakemake_writes_anything(data, tmp_path, capsys, case):
    from study.run import main

    extra, _, words = CASES[case]
    study = study_file(tmp_path, data, extra)
    assert main(["--cores", "1", "--configfile", str(study)]) == 2
    assert words in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_rule_the_files_meet_is_valid(data, tmp_path, capsys):
    study = study_file(tmp_path, data, ", channels: [GFP, 0], z: 1, t: 0")
    code, err = check(study, capsys)
    assert code == 0, err


def test_a_folder_mixing_two_channel_layouts_names_a_file_of_each(tmp_path, capsys):
    data = lab_folder(tmp_path / "data", {"a": NAMES, "b": ["DAPI", "GFP"]})
    code, err = check(study_file(tmp_path, data, ", channels: [RFP]"), capsys)
    line = one_line(err)
    assert code == 2 and "b/b0.ome.tif: data.channels has no channel named 'RFP'" in line
    assert "mixes channel layouts" in line and "a/a0.ome.tif has channels DAPI, GFP, RFP" in line
    assert decoder_line(data / "b" / "b0.ome.tif", channels=("RFP",)) in line
    code, err = check(study_file(tmp_path, data, ", channels: [GFP, DAPI]"), capsys)  # names every file has
    assert code == 0, err


def test_with_skip_bad_images_files_of_another_layout_are_left_to_the_jobs(tmp_path, capsys):
    data = lab_folder(tmp_path / "data", {"a": NAMES, "b": NAMES})
    write_ome_tiff(data / "b" / "odd.ome.tif", 99, ["DAPI", "GFP"])
    code, err = check(study_file(tmp_path, data, ", channels: [RFP], skip_bad_images: true"), capsys)
    assert code == 0, err
    code, err = check(study_file(tmp_path, data, ", channels: [NOPE], skip_bad_images: true"), capsys)
    line = one_line(err)  # no file can be read: every job would fail
    assert code == 2 and "no channel named 'NOPE'" in line and "skip" in line


def test_a_scene_the_file_does_not_have_is_said_before_any_job(tmp_path, capsys):
    data = lab_folder(tmp_path / "data")
    (data / "labels.csv").write_text("file,label\na/a0.ome.tif#scene-3,a\na/a1.ome.tif,a\na/a2.ome.tif,a\n"
                                     "b/b0.ome.tif,b\nb/b1.ome.tif,b\nb/b2.ome.tif,b\n")
    code, err = check(study_file(tmp_path, data), capsys)
    assert code == 2 and "a0.ome.tif#scene-3: no such scene; the file has 1 scene(s)" in one_line(err)


def test_percentile_dataset_with_a_command_that_refuses_it(data, tmp_path, capsys):
    code, err = check(study_file(tmp_path, data, ", normalize: percentile-dataset"), capsys)
    assert code == 2 and "percentile-dataset is applied by lora train only" in one_line(err) and "classify" in err


def test_percentiles_out_of_order(data, tmp_path, capsys):
    code, err = check(study_file(tmp_path, data, ", percentiles: [99.8, 1]"), capsys)
    assert code == 2 and "data.percentiles" in one_line(err)


def test_a_segmentation_study_checks_its_pair_images(tmp_path, capsys):
    data = tmp_path / "pairs"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(4):
        write_ome_tiff(data / "images" / f"c{i}.ome.tif", i)
        mask = np.zeros((32, 32), np.uint16)
        mask[4:12, 4:12] = 1
        tifffile.imwrite(data / "masks" / f"c{i}.ome.tif", mask)
    study = study_file(tmp_path, data, ", channels: [NOPE]", task=", task: segmentation")
    code, err = check(study, capsys)
    assert code == 2 and "no channel named 'NOPE'" in one_line(err), err


def test_a_big_folder_is_sampled_per_class_and_extension():
    from prompts.labcheck import SMALL_FOLDER, sample

    items = [(f"a/{i}.ome.tif", "a") for i in range(SMALL_FOLDER)] + [("a/x.png", "a"), ("b/0.tif", "b"), ("b/1.tif", "b")]
    assert sample(items[:SMALL_FOLDER]) == items[:SMALL_FOLDER]  # a small folder: every file
    assert sample(items) == [("a/0.ome.tif", "a"), ("a/x.png", "a"), ("b/0.tif", "b")]


def test_the_fast_scene_count_agrees_with_bioio(tmp_path):
    """The check lists a folder's scenes with tifffile (2 ms a file, not bioio's 30-70 ms): the same counts."""
    from prompts.images import _open, _tiff_scene_count

    two = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(two, ome=True) as w:
        for seed in (1, 2):
            w.write(np.full((2, 32, 32), seed, np.uint16), metadata={"axes": "CYX", "Channel": {"Name": NAMES[:2]}})
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.zeros((4, 32, 32), np.uint16))
    series = tmp_path / "series.tif"
    with tifffile.TiffWriter(series) as w:
        w.write(np.zeros((32, 32), np.uint16))
        w.write(np.zeros((16, 16, 3), np.uint8))
    for path in (two, pages, series, write_ome_tiff(tmp_path / "one.ome.tif", 0)):
        assert _tiff_scene_count(path) == len(_open(path).scenes), path


def test_the_check_reads_no_pixels(data, tmp_path, monkeypatch, capsys):
    """Headers only: a decoder call during the check would fail this test."""
    import prompts.images as images

    def no_pixels(*args, **kwargs):
        raise AssertionError("the check decoded pixels")

    monkeypatch.setattr(images, "read_lab_file", no_pixels)
    monkeypatch.setattr(images, "load_image", no_pixels)
    code, err = check(study_file(tmp_path, data, ", channels: [NOPE]"), capsys)
    assert code == 2 and "NOPE" in one_line(err)
