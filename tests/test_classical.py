"""The classical floor (analysis.classical): Otsu + distance-transform watershed, against hand-made scenes."""
import numpy as np
import pytest

from analysis.classical import foreground, otsu_watershed, remove_small, split_touching
from analysis.matching import matching

pytestmark = pytest.mark.unit


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = i
    return labels


def test_separated_discs_are_found_one_each():
    truth = _discs((64, 80), [(15, 15), (15, 50), (45, 20), (48, 60)], 6)
    image = (truth > 0) * 200.0 + 10.0
    pred = otsu_watershed(image)
    m = matching(truth, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (4, 0, 0)


def test_two_touching_discs_are_split():
    truth = _discs((40, 60), [(20, 20), (20, 31)], 7)  # overlapping by 3 px: one connected component
    mask = truth > 0
    from scipy import ndimage as ndi

    assert ndi.label(mask)[1] == 1
    pred = split_touching(mask)
    assert pred.max() == 2


def test_flat_and_empty_images_have_no_cells():
    assert otsu_watershed(np.full((16, 16), 7.0)).max() == 0
    assert not foreground(np.zeros((8, 8))).any()


def test_remove_small_drops_and_renumbers():
    labels = np.zeros((10, 10), np.int32)
    labels[0, 0] = 3  # 1 px
    labels[5:9, 5:9] = 7  # 16 px
    out = remove_small(labels, 4)
    assert sorted(np.unique(out)) == [0, 1] and (out == 1).sum() == 16
