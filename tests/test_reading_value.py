"""The reading rule is a value, never process state: each decoder call gets the `Reading` of its command's study
file, and every output made from pixels (realism included) and every report records which rule it used.

Fast: 16-bit PNGs written here (Pillow decodes them, the rule maps them to 8 bits), the realism records' identity
computed without features, and the reports rendered from hand-made results records.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prompts.normalize import DEFAULT, Reading
from prompts.schema import DataSection

pytestmark = pytest.mark.unit


def sixteen_bit_png(path, seed: int):
    """A 16-bit grayscale PNG (mode I;16) with values in 100..3000: each rule maps it to other 8-bit pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(100, 3000, (24, 24)).astype(np.uint16)
    Image.fromarray(arr).save(path)
    return path


# --------------------------------------------------------------------------- (a) no process-global rule

def test_the_decoder_module_keeps_no_rule_of_its_own():
    import prompts.images as images

    for name in ("set_reading", "current_reading", "_READING"):
        assert not hasattr(images, name), name


def test_two_rules_in_one_process_each_decode_with_their_own_in_either_order(tmp_path):
    from prompts.images import load_image

    a, b = sixteen_bit_png(tmp_path / "a.png", 0), sixteen_bit_png(tmp_path / "b.png", 1)
    percentile, none = Reading(), Reading(normalize="none")

    def decode(path, rule):
        return np.asarray(load_image(path, rule))

    first = [decode(a, percentile), decode(b, none)]
    second = [decode(b, none), decode(a, percentile)][::-1]  # the other order
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(decode(a, percentile), decode(a, none))  # the rules really differ on these pixels
    assert decode(a, none).max() <= round(3000 * 255 / 65535)  # none: linear from 0..65535, as documented


def test_a_decoder_call_without_a_rule_fails_loudly(tmp_path):
    from prompts.images import check_decodes, load_image, raw_planes

    path = sixteen_bit_png(tmp_path / "a.png", 0)
    for decode in (load_image, check_decodes, raw_planes):
        with pytest.raises(TypeError):
            decode(path)


def test_a_command_reading_its_study_leaves_no_rule_behind(tmp_path):
    """`read_settings` checks the rule against the command and installs nothing: the next decode uses its own."""
    from prompts.cli import Parser, add_config_flag, add_section_flags, read_settings
    from prompts.images import load_image

    path = sixteen_bit_png(tmp_path / "a.png", 0)
    before = np.asarray(load_image(path, DEFAULT))
    parser = Parser(prog="t")
    add_config_flag(parser)
    add_section_flags(parser, DataSection)
    study = read_settings(parser.parse_args(["--data", str(tmp_path), "--normalize", "none"]), "prompts show", ("data",))
    assert study.data.normalize == "none"
    assert np.array_equal(np.asarray(load_image(path, DEFAULT)), before)


# --------------------------------------------------------------------------- (b) realism records the rule

@pytest.mark.parametrize("room", ["classify", "segment"])
def test_a_realism_record_changes_when_only_data_normalize_changes(room, tmp_path):
    if room == "classify":
        from classify.realism import realism_identity
        from prompts.schema.classify import ClassifySection as Section
    else:
        from prompts.schema.segment import SegmentSection as Section
        from segment.realism import realism_identity

    section = Section()
    one = realism_identity(DataSection(data=str(tmp_path), normalize="percentile"), section, tmp_path / "syn")
    other = realism_identity(DataSection(data=str(tmp_path), normalize="minmax"), section, tmp_path / "syn")
    assert [k for k in one if one[k] != other[k]] == ["reading"]
    assert one["reading"] == Reading().record() and other["reading"]["normalize"] == "minmax"


def test_a_synthetic_pair_tree_records_the_rule_of_its_controlnet(tmp_path):
    """`controlnet sample` trees: their pixels come from a ControlNet trained on real pixels read under a rule."""
    pytest.importorskip("torch")
    from controlnet.sample import FoldPlan, tree_fingerprint
    from prompts import fingerprint
    from prompts.layout import FINGERPRINT_FILE

    records = []
    for rule in (DEFAULT, Reading(normalize="none")):
        cn = tmp_path / rule.normalize / "controlnet"
        cn.mkdir(parents=True)
        fingerprint.write(cn / FINGERPRINT_FILE, {"version": 1, "parts": {}, "reading": rule.record()})
        records.append(tree_fingerprint(FoldPlan(None, cn, None, [], [], tmp_path), "cn1.0", []))
    assert fingerprint.diff(*records) == ["reading"] and records[1]["reading"]["normalize"] == "none"


# --------------------------------------------------------------------------- (c) reports name the rule

def test_the_reading_line_names_the_rule():
    from prompts.normalize import reading_line

    line = reading_line(Reading(normalize="minmax", channels=("DAPI",)).record())
    assert line.startswith("Images read with") and "min-max per image" in line and "channels DAPI" in line
    assert "percentile 1-99.8" in reading_line(DEFAULT.record())
    assert reading_line(None) == ""  # a results record written before the rule was recorded
    assert Reading.from_record(Reading(normalize="none", z=2, t="each", levels=((1.0, 9.0),)).record()) == \
        Reading(normalize="none", z=2, t="each", levels=((1.0, 9.0),))


def test_the_classification_report_states_the_rule_of_its_results(tmp_path):
    pytest.importorskip("sklearn")
    from analysis.stats import fold_metrics
    from analysis.tables import render_markdown
    from classify.cv import summarize
    from classify.report import build_report
    from prompts.dataset import Dataset, Record
    from prompts.mixes import parse_mixes
    from prompts.schema.classify import ClassifySection
    from prompts.splits import make_split

    classes = ["a", "b"]
    dataset = Dataset(tmp_path, [Record(f"{c}/{i}.png", c) for c in classes for i in range(6)], "folders")
    split = make_split(dataset, 3, 1, None, 0)
    runs = []
    for fold in split.folds:
        y = np.array([classes.index(p.split("/")[0]) for p in fold.test])
        runs.append({"fold": fold.index, "repeat": fold.repeat, "mix": "real", "tree": "real", "leaky": False,
                     "metrics": fold_metrics(y, y, classes), "n_train": len(fold.train), "n_test": len(fold.test),
                     "synthetic_fraction": 0.0, "shortfall": {}, "counts": {}})
    for rule, words in ((Reading(normalize="minmax"), "min-max per image"), (DEFAULT, "percentile 1-99.8 per image")):
        res = summarize(runs, dataset, split, parse_mixes("real"), None, ClassifySection(), rule)
        assert res["reading"] == rule.record()
        md = render_markdown(build_report(res, figures=False))
        (line,) = [x for x in md.splitlines() if "Images read with" in x]
        assert words in line


def test_the_phenotyping_report_states_the_rule_it_read_with(tmp_path):
    """`phenotype cv` (reference classifier, drawn co-cultures; seconds): report.md names the study's rule."""
    from phenotype.__main__ import main
    from phenotype.scenes import synthetic_cell, write_study_data

    rng = np.random.default_rng(0)
    pools = {"small": [synthetic_cell(4, 220, "small", rng) for _ in range(8)],
             "large": [synthetic_cell(8, 90, "large", rng) for _ in range(8)]}
    data = tmp_path / "data"
    write_study_data(data, pools, mono_images=1, co_images=4, cells_per_image=5, size=(80, 80), background=30, seed=1)
    out = tmp_path / "out"
    assert main(["cv", "--no-progress", "--data", str(data), "--output", str(out), "--models", "reference", "--regimes",
                 "zero-shot", "--folds", "2", "--trees", "5", "--crop-size", "24", "--normalize", "minmax"]) == 0
    (line,) = [x for x in (out / "report.md").read_text(encoding="utf-8").splitlines() if "Images read with" in x]
    assert "min-max per image" in line


def test_the_segmentation_report_states_the_rule_it_read_with(tmp_path):
    """`segment cv` with the classical floor (no training): report.md names the study's rule."""
    pytest.importorskip("keras")
    from prompts.blobs import make_blob_pairs
    from segment.__main__ import main

    data = make_blob_pairs(tmp_path / "data", n=4, size=64, seed=0)
    out = tmp_path / "out"
    assert main(["cv", "--no-progress", "--data", str(data), "--output", str(out), "--mixes", "real", "--folds", "2",
                 "--model", "otsu-watershed", "--weights", "tiny", "--image-size", "64", "--overlays", "0",
                 "--normalize", "none"]) == 0
    (line,) = [x for x in (out / "report.md").read_text(encoding="utf-8").splitlines() if "Images read with" in x]
    assert "linear from the dtype's full range" in line
