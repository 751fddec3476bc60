"""Metrics at native resolution: predictions made at the training size are scored on the masks as stored,
the matching at IoU 0.5..0.9 equals `stardist.matching.matching`, the classical floor scores a hand value."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from segment.metrics import THRESHOLDS, count_matches, score_set

# unit tier by default (tests/conftest.py); its slowest test is on END_TO_END_TESTS there

H, W, S = 220, 300, 128


def _squares(shape, boxes):
    out = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        out[r0:r1, c0:c1] = i + 1
    return out


TRUE_BOXES = [(20, 80, 20, 90), (120, 190, 40, 120), (60, 140, 180, 270)]


def _hand_probs():
    """(S, S, 3) probabilities that find the first two true squares (at S x S scale) and one object that is not there."""
    from segment.model import BACKGROUND, INTERIOR

    p = np.zeros((S, S, 3), np.float32)
    p[..., BACKGROUND] = 1.0
    sy, sx = S / H, S / W
    for r0, r1, c0, c1 in [*TRUE_BOXES[:2], (195, 215, 200, 240)]:  # the third box of the truth is missed
        ys, xs = slice(round(r0 * sy), round(r1 * sy)), slice(round(c0 * sx), round(c1 * sx))
        p[ys, xs, BACKGROUND], p[ys, xs, INTERIOR] = 0.0, 1.0
    return p


def test_prediction_at_training_size_is_scored_on_the_native_mask():
    from segment.native import unet_native_instances

    truth = _squares((H, W), TRUE_BOXES)
    pred = unet_native_instances(_hand_probs(), (H, W), S, min_size=4)
    assert pred.shape == (H, W)  # not 128 x 128
    s = score_set([(truth, pred)])
    # by hand: 2 true positives (IoU ~0.9 after resizing back), 1 false positive, 1 false negative
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["ap50"] == pytest.approx(2 / 4) and s["n_true"] == 3 and s["n_pred"] == 3
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)


def test_cv_scores_300x220_pairs_at_their_own_size(tmp_path):
    """A whole CV with image_size 128 on 300 x 220 pairs (the floor: no training): every score and prediction is 300 x 220."""
    from prompts.schema import DataSection, SegmentSection
    from segment.cv import run_cv

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    for i in range(4):
        truth = np.zeros((H, W), np.int32)
        for k, (cy, cx, r) in enumerate([(50, 50 + 5 * i, 25), (150, 80, 30), (100, 220 - 3 * i, 35)], start=1):
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        img = (20 + 180 * (truth > 0) + rng.integers(0, 10, (H, W))).astype(np.uint8)
        Image.fromarray(img).save(data / "images" / f"s{i}.png")
        tifffile.imwrite(data / "masks" / f"s{i}.tif", truth.astype(np.uint16))
    out = tmp_path / "out"
    seg = SegmentSection(output=str(out), folds=2, mixes=["real"], model="otsu-watershed", weights="tiny", image_size=S)
    results = run_cv(DataSection(data=str(data)), seg, progress=False)
    assert results["not_learned"] and "no verdict" in results["not_learned"]
    for run in results["runs"]:
        assert run["metrics"]["ap50"] == pytest.approx(1.0)  # separated bright discs: the floor finds each one
        for row in run["per_image"]:
            assert (row["height"], row["width"]) == (H, W) and row["n_true"] == 3 and row["mask_kind"] == "instance"
        for p in run["predictions"]:
            assert tifffile.imread(out / p).shape == (H, W) and tifffile.imread(out / p).dtype == np.uint16
    saved = json.loads((out / "runs" / "real" / "real" / "fold_0.json").read_text())
    assert saved["per_set"]["all"]["n_images"] == 2


def test_floor_on_blob_scenes_scores_the_hand_value():
    """Two well separated bright discs and one pair of touching discs on a dark, noisy field: 4 objects, all found."""
    from analysis.classical import otsu_watershed

    yy, xx = np.mgrid[:96, :96]
    truth = np.zeros((96, 96), np.int32)
    for i, (cy, cx) in enumerate([(20, 20), (20, 70), (65, 30), (65, 47)], start=1):  # the last two touch
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = i
    image = (30 + 170 * (truth > 0) + np.random.default_rng(1).integers(0, 20, truth.shape)).astype(np.uint8)
    s = score_set([(truth, otsu_watershed(image, min_size=4))])
    assert s["n_true"] == 4 and s["ap50"] == pytest.approx(1.0)


def test_floor_finds_dark_cells_on_a_bright_field():
    """Blob scenes (stained cells darker than the background): the floor inverts them and finds the cells."""
    from prompts.blobs import blob_scene
    from segment.models import floor_instances

    pairs = []
    for i in range(6):
        rgb, truth = blob_scene(96, np.random.default_rng([0, i]))
        pairs.append((truth, floor_instances(rgb, 4)))
    s = score_set(pairs)
    assert s["ap50"] > 0.9 and abs(s["n_pred"] - s["n_true"]) <= 3, s  # measured 0.989, 91 predicted for 90 cells
    flipped = 255 - blob_scene(96, np.random.default_rng([0, 0]))[0]  # the same scene as fluorescence: bright cells
    assert floor_instances(flipped, 4).max() == pairs[0][1].max()


def test_sets_follow_the_images_folder_name():
    from segment.native import set_of

    assert set_of("cls_a/images/x.png") == "cls_a" and set_of("images/x.png") == "all" and set_of("01/t000.tif") == "01"
    assert set_of("hela/img/dna-1.png", "img") == "hela" and set_of("img/a.png", "img") == "all"


# ---------------------------------------------------------------- against StarDist's own matching

stardist_matching = pytest.importorskip("stardist.matching")


def _random_labels(rng, shape=(64, 64), n=8):
    out = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        r0, c0 = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
        h, w = rng.integers(4, 12, 2)
        out[r0:r0 + h, c0:c0 + w] = i  # later boxes overlap earlier ones: touching and cut objects
    return out


def _jitter(rng, labels):
    out = np.roll(labels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    out[rng.random(labels.shape) < 0.05] = 0
    return out


def _touching():
    a = np.zeros((20, 20), np.int32)
    a[2:10, 2:10], a[2:10, 10:18] = 1, 2  # two cells sharing an edge
    b = np.zeros_like(a)
    b[2:10, 2:12], b[2:10, 12:18] = 5, 9  # the boundary drawn 2 px to the right
    return a, b


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(6):
        t = _random_labels(rng)
        cases.append((t, _jitter(rng, t)))
    empty = np.zeros((64, 64), np.int32)
    cases += [(cases[0][0], empty), (empty, cases[0][0]), (empty, empty), _touching()]
    return cases


@pytest.mark.parametrize("case", range(10))
@pytest.mark.parametrize("thresh", THRESHOLDS)
def test_matching_equals_stardist(case, thresh):
    y_true, y_pred = _cases()[case]
    ours = count_matches(y_true, y_pred, [thresh])[thresh]
    ref = stardist_matching.matching(y_true, y_pred, thresh=thresh)
    assert (ours.tp, ours.fp, ours.fn) == (ref.tp, ref.fp, ref.fn)
    r = ours.ratios()
    assert r["precision"] == pytest.approx(ref.precision) and r["recall"] == pytest.approx(ref.recall)
    assert r["f1"] == pytest.approx(ref.f1) and r["ap"] == pytest.approx(ref.accuracy)
    assert r["mean_iou"] == pytest.approx(ref.mean_matched_score) and r["pq"] == pytest.approx(ref.panoptic_quality)


def test_pooled_set_equals_stardist_matching_dataset():
    cases = _cases()
    ours = score_set(cases)
    for t in THRESHOLDS:
        ref = stardist_matching.matching_dataset([a for a, _ in cases], [b for _, b in cases], thresh=t, show_progress=False)
        got = ours["by_threshold"][f"{t:g}"]
        assert got["ap"] == pytest.approx(ref.accuracy) and got["f1"] == pytest.approx(ref.f1)
        assert got["pq"] == pytest.approx(ref.panoptic_quality) and got["mean_iou"] == pytest.approx(ref.mean_matched_score)


def test_stardist_cv_runs_on_blob_scenes_with_the_floor_beside_it(tmp_path):
    """segment.model stardist: trained from scratch per fold (tiny net, 1 epoch), native predictions, floor reported beside it."""
    pytest.importorskip("stardist.models")
    from prompts.blobs import make_blob_pairs
    from prompts.schema import DataSection, SegmentSection
    from segment.cv import run_cv

    data = make_blob_pairs(tmp_path / "blobs", n=6, size=64, seed=0)
    out = tmp_path / "out"
    seg = SegmentSection(output=str(out), folds=2, mixes=["real"], model="stardist", weights="tiny", image_size=64,
                         epochs=1, batch_size=2)
    results = run_cv(DataSection(data=str(data)), seg, progress=False)
    assert results["model"] == "stardist" and results["floor"] is not None
    assert "StarDist 2D trained from scratch" in results["training"]["note"]
    for run in results["runs"]:
        assert run["floor"]["metrics"]["n_true"] == run["metrics"]["n_true"] > 0
        assert len(run["predictions"]) == run["n_test"] and tifffile.imread(out / run["predictions"][0]).shape == (64, 64)


def test_a_baseline_that_did_not_learn_gets_no_verdict(tmp_path):
    """epochs: 1 with the tiny U-Net on blob scenes: the real baseline does not beat the floor -> flagged, no verdict."""
    pytest.importorskip("keras")
    from prompts.blobs import make_blob_pairs
    from segment.__main__ import main

    data = make_blob_pairs(tmp_path / "blobs", n=6, size=64, seed=0)
    out = tmp_path / "out"
    syn = make_blob_pairs(tmp_path / "syn" / "aug", n=4, size=64, seed=9).parent
    assert main(["cv", "--no-progress", "--data", str(data), "--output", str(out), "--synthetic", str(syn), "--folds", "2",
                 "--mixes", "real,real+50", "--weights", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["not_learned"] and "did not learn; more epochs, more pairs, or a larger model" in results["not_learned"]
    assert not any(r.get("verdict") for rows in results["tables"].values() for r in rows)
    md = (out / "report.md").read_text()
    assert "No verdict" in md and "equivalent" not in md.lower().replace("equivalence", "")


def test_learning_check_rules():
    from segment.cv import learning_check

    def tables(ap):
        return {"real": [{"mix": "real", "folds": [0, 1], "metrics": {"ap50": {"mean": ap}}}]}

    floor = {"metrics": {"ap50": {"mean": 0.4}}}
    assert "< 0.05" in learning_check(tables(0.003), None, "unet")
    assert "classical floor" in learning_check(tables(0.3), floor, "unet")
    assert learning_check(tables(0.6), floor, "unet") is None
    assert "no verdict" in learning_check(tables(0.6), floor, "otsu-watershed")


def test_the_report_describes_only_the_model_that_ran():
    """The floor has no settings and StarDist no encoder: the report's model sentence names the settings of the model
    that ran, never the U-Net's when it did not run."""
    from segment.report import model_line

    settings = {"backbone": "MobileNetV2", "weights": "imagenet", "image_size": 256, "epochs": 50, "batch_size": 8}
    assert model_line({"model": "unet", "settings": settings}).startswith("U-Net: MobileNetV2 encoder (imagenet), 256 px, 50 epochs")
    stardist = model_line({"model": "stardist", "settings": settings})
    assert stardist.startswith("StarDist 2D (imagenet weights): trained on 256 px patches") and "encoder" not in stardist
    floor = model_line({"model": "otsu-watershed", "settings": settings})
    assert "no training" in floor and "U-Net" not in floor and "256" not in floor
