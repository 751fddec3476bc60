"""Masks: instance label images (int32 (H, W), 0 background, 1..N cells) and the conditions made from them.

- `render_condition`: the ControlNet's condition image, float32 (3, H, W) in 0..1:
  channel 0 = foreground (any cell), channel 1 = instance boundaries (the cell's own pixels that
  touch background or another cell, `width` px wide), channel 2 = 0. The boundaries are what tell
  two touching cells apart, as the segmentation U-Net's foreground + boundary targets do.
- new conditions from training masks: `flip_rotate` (the 8 flips/rot90s), `elastic` (a smooth
  random displacement field, nearest-neighbour sampling so labels stay labels), and `compose`
  (cells of several masks placed into one denser scene at a chosen density).

Every function returning a mask returns it relabelled 1..N (`relabel`): ids unique, no gaps,
each id one connected piece, int32. Randomness only from the `numpy.random.Generator` given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def relabel(mask: np.ndarray, min_area: int = 1) -> np.ndarray:
    """int32 labels 1..N: each connected piece of each id becomes its own cell; pieces under `min_area` px are dropped.

    A cell cut in two (by a deformation or by occlusion) keeps only its largest piece, so ids stay one object each.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    out = np.zeros(mask.shape, np.int32)
    next_id = 1
    for sl, cell_id in zip(ndimage.find_objects(mask), range(1, int(mask.max(initial=0)) + 1)):
        if sl is None:
            continue
        pieces, n = ndimage.label(mask[sl] == cell_id)
        if n == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        if sizes[keep - 1] < min_area:
            continue
        region = out[sl]
        region[pieces == keep] = next_id
        next_id += 1
    return out


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Shortest side to `size` (nearest neighbour: labels stay labels), then the centre `size` x `size` crop.

    The same geometry as the images' (prompts.images.resize_shortest_side + center_crop), so pairs stay aligned.
    """
    from PIL import Image

    h, w = mask.shape
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = Image.fromarray(mask.astype(np.int32), mode="I").resize((new_w, new_h), Image.Resampling.NEAREST)
    arr = np.asarray(img, np.int32)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size]).copy()  # writable, unlike PIL's buffer


def render_condition(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The condition image float32 (3, H, W) in 0..1 of an instance mask (H, W): foreground, boundaries, 0.

    width: boundary width in px (default: 1 px per 256 px of the shorter side, at least 1).
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    mask = np.asarray(mask)
    width = width or max(1, round(min(mask.shape) / 256))
    fg = mask > 0
    edges = find_boundaries(mask, connectivity=1, mode="inner") & fg
    if width > 1:
        edges = ndimage.binary_dilation(edges, iterations=width - 1) & fg
    cond = np.zeros((3, *mask.shape), np.float32)
    cond[0], cond[1] = fg, edges
    return cond


def condition_image(mask: np.ndarray):
    """The condition as an 8-bit RGB PIL image (what the pipeline takes and what a user can look at)."""
    from PIL import Image

    return Image.fromarray((np.moveaxis(render_condition(mask), 0, -1) * 255).round().astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------- single-mask augmentations

def flip_rotate(mask: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """rot90 by k quarter turns, then a horizontal flip when `flip` (the 8 symmetries of a square)."""
    out = np.rot90(mask, k)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float, min_area: int = 4) -> np.ndarray:
    """Elastic deformation (Simard et al. 2003): displacement = alpha x (Gaussian-smoothed uniform noise, scaled to max 1).

    alpha: largest displacement in px; sigma: smoothness in px. Sampled with nearest neighbour (order 0)
    and reflected at the border; relabelled afterwards (a cell torn in two keeps its largest piece).
    """
    from scipy import ndimage

    h, w = mask.shape
    fields = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect")
        fields.append(f / max(np.abs(f).max(), 1e-12) * alpha)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warped = ndimage.map_coordinates(mask, [yy + fields[0], xx + fields[1]], order=0, mode="reflect")
    return relabel(warped, min_area)


def augment(mask: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """One random flip/rot90 and (alpha > 0) one elastic deformation of a training mask."""
    out = flip_rotate(mask, int(rng.integers(4)), bool(rng.integers(2)))
    return elastic(out, rng, alpha, sigma) if alpha > 0 else relabel(out)


# --------------------------------------------------------------------------- composed scenes

@dataclass(frozen=True)
class Cell:
    """One cell cut out of a mask: its footprint (bool (h, w)) and where it came from."""

    shape: np.ndarray
    source: int  # index of the mask in the pool
    touches_border: bool


def cells_of(masks: list[np.ndarray]) -> list[Cell]:
    """Every cell of every mask as a footprint; cells cut by the image border are marked."""
    from scipy import ndimage

    out = []
    for i, mask in enumerate(masks):
        h, w = mask.shape
        for cell_id, sl in enumerate(ndimage.find_objects(mask), start=1):
            if sl is None:
                continue
            border = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w
            out.append(Cell(mask[sl] == cell_id, i, border))
    return out


def density_of(mask: np.ndarray) -> float:
    """Cells per 100 x 100 px of a mask."""
    return float(len(np.unique(mask[mask > 0]))) * 10_000.0 / mask.size


def compose(masks: list[np.ndarray], size: int, density: float, rng: np.random.Generator,
            min_visible: float = 0.6, tries_per_cell: int = 30) -> tuple[np.ndarray, list[int]]:
    """A new scene (size, size) of cells drawn from `masks` at `density` cells per 100 x 100 px.

    Cells (whole ones preferred over those cut by their image's border) are drawn at random, given a
    random flip/rot90 and placed where they overlap no other cell, keeping a 1 px gap so neighbours
    stay apart. When the scene is too full for that, a cell may go beneath earlier ones (occlusion:
    only its free pixels are kept) if at least `min_visible` of it stays visible. Placement stops at
    the target count or when no cell fits in `tries_per_cell` tries; the caller reads the density
    reached with `density_of`. Returns (mask relabelled 1..N, indices of the source masks used).
    """
    from scipy import ndimage

    pool = cells_of(masks)
    whole = [c for c in pool if not c.touches_border and c.shape.shape[0] < size and c.shape.shape[1] < size]
    pool = whole or [c for c in pool if c.shape.shape[0] <= size and c.shape.shape[1] <= size]
    if not pool:
        raise ValueError("no cell of the training masks fits a scene of this size")
    target = max(1, round(density * size * size / 10_000))
    scene = np.zeros((size, size), np.int32)
    taken = np.zeros((size, size), bool)  # cells grown by 1 px: the gap between neighbours
    sources: set[int] = set()
    placed = 0
    while placed < target:
        for attempt in range(tries_per_cell):
            cell = pool[int(rng.integers(len(pool)))]
            shape = flip_rotate(cell.shape, int(rng.integers(4)), bool(rng.integers(2)))
            h, w = shape.shape
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            window = (slice(top, top + h), slice(left, left + w))
            overlap = (shape & taken[window]).any()
            occlude = attempt >= tries_per_cell // 2  # first tries: free spots only; then beneath others
            if overlap and not occlude:
                continue
            visible = shape & ~taken[window]
            if overlap and visible.sum() < min_visible * shape.sum():
                continue
            placed += 1
            scene[window][visible] = placed
            grown = (slice(max(top - 1, 0), top + h + 1), slice(max(left - 1, 0), left + w + 1))  # 1 px beyond the cell
            taken[grown] |= ndimage.binary_dilation(scene[grown] == placed)
            sources.add(cell.source)
            break
        else:
            break  # nothing fits any more
    return relabel(scene, min_area=4), sorted(sources)
