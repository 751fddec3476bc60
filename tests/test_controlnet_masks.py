"""Conditions from training masks: flips/rotations, elastic deformation, composed denser scenes, the rendering."""
from __future__ import annotations

import numpy as np
import pytest

from controlnet.masks import compose, density_of, elastic, flip_rotate, relabel, render_condition, resize_mask
from prompts.blobs import blob_scene


def _is_instance_mask(m: np.ndarray) -> bool:
    """int32, ids 1..N without gaps, each id one 4-connected piece."""
    from scipy import ndimage

    ids = np.unique(m[m > 0])
    if m.dtype != np.int32 or list(ids) != list(range(1, len(ids) + 1)):
        return False
    return all(ndimage.label(m == i)[1] == 1 for i in ids)


@pytest.fixture(scope="module")
def masks():
    return [resize_mask(blob_scene(64, np.random.default_rng(i))[1], 128) for i in range(3)]


def test_relabel_splits_torn_cells_and_drops_specks():
    m = np.zeros((10, 10), np.int32)
    m[0:3, 0:3] = 5
    m[6:9, 6:9] = 5  # the same id twice: a torn cell keeps its larger piece
    m[6:8, 0:1] = 5  # smaller piece dropped
    m[0, 9] = 9  # a 1-px speck
    out = relabel(m, min_area=2)
    assert _is_instance_mask(out) and out.max() == 1 and out[1, 1] == 1 and out[7, 7] == 0


def test_flip_rotate_gives_the_8_symmetries(masks):
    m = masks[0]
    variants = {flip_rotate(m, k, f).tobytes() for k in range(4) for f in (False, True)}
    assert len(variants) == 8
    assert np.array_equal(flip_rotate(m, 0, False), m)
    assert np.array_equal(np.sort(np.unique(flip_rotate(m, 1, True))), np.unique(m))


def test_elastic_moves_cells_keeps_labels_and_is_deterministic(masks):
    m = masks[0]
    a = elastic(m, np.random.default_rng(3), alpha=6, sigma=10)
    b = elastic(m, np.random.default_rng(3), alpha=6, sigma=10)
    c = elastic(m, np.random.default_rng(4), alpha=6, sigma=10)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert _is_instance_mask(a)
    assert not np.array_equal(a > 0, m > 0)  # deformed
    assert abs(int(a.max()) - int(m.max())) <= 2  # cells survive (a torn-off speck may go)
    assert abs((a > 0).mean() - (m > 0).mean()) < 0.05  # about the same area


@pytest.mark.parametrize("density", [2.0, 8.0, 14.0])
def test_compose_reaches_the_density(masks, density):
    out, sources = compose(masks, 128, density, np.random.default_rng(0))
    assert _is_instance_mask(out) and out.shape == (128, 128)
    target = density * 128 * 128 / 10_000
    assert abs(density_of(out) * 128 * 128 / 10_000 - target) <= max(1.0, 0.1 * target)
    assert len(sources) >= 2  # cells of several images


def test_compose_is_denser_than_its_sources_and_deterministic(masks):
    source_density = np.mean([density_of(m) for m in masks])
    a, _ = compose(masks, 128, 2 * source_density, np.random.default_rng(7))
    b, _ = compose(masks, 128, 2 * source_density, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert density_of(a) > 1.7 * source_density


def test_compose_never_overlaps_cells(masks):
    """Resolved overlaps: every pixel has one id and cells do not touch (1 px gap), even past the free-space limit."""
    from scipy import ndimage

    out, _ = compose(masks, 128, 40.0, np.random.default_rng(1))
    grown = [ndimage.binary_dilation(out == i) for i in range(1, out.max() + 1)]
    touching = sum(g & (out > 0) & (out != i + 1) for i, g in enumerate(grown))
    assert not np.any(touching)


def test_render_condition_marks_foreground_and_boundaries():
    m = np.zeros((20, 20), np.int32)
    m[2:10, 2:10] = 1
    m[2:10, 10:18] = 2  # touches cell 1
    cond = render_condition(m)
    assert cond.shape == (3, 20, 20) and cond.dtype == np.float32
    assert np.array_equal(cond[0] > 0, m > 0)
    assert cond[1, 5, 9] == 1 and cond[1, 5, 10] == 1  # the shared edge is drawn on both cells
    assert cond[1, 5, 5] == 0 and cond[1, 0, 0] == 0 and not cond[2].any()
