"""Segmentation metrics against values computed by hand (StarDist's `matching` definitions), and the
3-class target / instance decoding round trip. No Keras: fast."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.matching import Match, iou_matrix, matching, pixel_counts
from segment.metrics import score_set


def squares(shape, boxes):
    """A label image with label i+1 filling box i = (row0, row1, col0, col1) (end exclusive)."""
    out = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        out[r0:r1, c0:c1] = i + 1
    return out


def test_matching_hand_values():
    # truth: A (4x4 at 0,0) and B (4x4 at 0,10). prediction: A exactly; B shifted by 3 columns
    # (overlap 4x1 = 4 px, union 16+16-4 = 28: IoU 1/7 < 0.5); an extra object C far away.
    y_true = squares((10, 20), [(0, 4, 0, 4), (0, 4, 10, 14)])
    y_pred = squares((10, 20), [(0, 4, 0, 4), (0, 4, 13, 17), (6, 9, 6, 9)])
    iou = iou_matrix(y_true, y_pred)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == 1.0 and iou[1, 1] == pytest.approx(4 / 28) and iou[0, 2] == 0 and iou[1, 2] == 0
    m = matching(y_true, y_pred)
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.precision == pytest.approx(1 / 3)
    assert m.recall == pytest.approx(1 / 2)
    assert m.f1 == pytest.approx(2 / (2 + 2 + 1))
    assert m.accuracy == pytest.approx(1 / 4)  # StarDist's accuracy = AP at IoU 0.5: tp / (tp + fp + fn)


def test_matching_threshold_is_inclusive_and_labels_need_not_be_consecutive():
    # truth 4x4 (16 px); prediction 4x2 inside it: IoU 8/16 = 0.5 exactly, a match at thresh 0.5 (>=, as StarDist)
    y_true = squares((6, 6), [(0, 4, 0, 4)]) * 7  # label 7
    y_pred = np.zeros((6, 6), np.int32)
    y_pred[0:4, 0:2] = 300
    assert iou_matrix(y_true, y_pred)[0, 0] == 0.5
    assert (matching(y_true, y_pred).tp, matching(y_true, y_pred, thresh=0.51).tp) == (1, 0)


def test_matching_one_to_one():
    # one predicted object covering two true ones: IoU 0.5 with each, but it may match only one of them
    y_true = squares((4, 8), [(0, 4, 0, 4), (0, 4, 4, 8)])
    y_pred = np.ones((4, 8), np.int32)
    m = matching(y_true, y_pred)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_matching_empty_images():
    empty = np.zeros((5, 5), np.int32)
    one = squares((5, 5), [(1, 3, 1, 3)])
    assert matching(empty, empty) == Match(0, 0, 0) and matching(empty, empty).accuracy == 0.0  # StarDist: 0 when tp = 0
    assert matching(one, empty) == Match(0, 0, 1)
    assert matching(empty, one) == Match(0, 1, 0)


def test_pixel_iou_dice_hand_values():
    y_true = squares((10, 10), [(0, 4, 0, 4)])  # 16 px
    y_pred = squares((10, 10), [(0, 4, 2, 6)])  # 16 px, overlap 8
    px = pixel_counts(y_true, y_pred)
    assert (px.intersection, px.true, px.pred) == (8, 16, 16)
    assert px.iou == pytest.approx(8 / 24)
    assert px.dice == pytest.approx(16 / 32)


def test_score_set_pools_counts_over_images():
    # image 1: one cell found exactly. image 2: three cells, none found. Pooled AP50 = 1 / 4 (a per-image mean would say 0.5).
    a = squares((8, 8), [(0, 3, 0, 3)])
    b = squares((8, 8), [(0, 2, 0, 2), (4, 6, 0, 2), (4, 6, 4, 6)])
    s = score_set([(a, a), (b, np.zeros_like(b))])
    assert (s["tp"], s["fp"], s["fn"], s["n_images"]) == (1, 0, 3, 2)
    assert s["ap50"] == pytest.approx(0.25) and s["recall"] == pytest.approx(0.25) and s["precision"] == 1.0
    assert s["iou"] == pytest.approx(9 / (9 + 12))


def test_targets_and_instances_round_trip():
    """A perfect 3-class prediction decodes back to the true instances, touching cells kept apart."""
    pytest.importorskip("skimage")
    from segment.model import BOUNDARY, INTERIOR, instances, targets

    labels = squares((24, 24), [(2, 10, 2, 10), (2, 10, 10, 18), (14, 22, 4, 12)])  # the first two touch
    t = targets(labels)
    assert t[labels == 0].max() == 0
    assert t[2, 5] == BOUNDARY and t[5, 9] == BOUNDARY and t[5, 10] == BOUNDARY and t[5, 5] == INTERIOR
    probs = np.eye(3, dtype=np.float32)[t]
    pred = instances(probs)
    assert pred.max() == 3
    m = matching(labels, pred, thresh=0.9)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)

