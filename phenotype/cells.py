"""Cells: instances of an image (its mask, or the classical floor), each cut out as a crop centred on it.

A crop is `crop_size` x `crop_size` pixels of the image as the study reads it (`prompts.images.load_image`
under the data section's reading rule), centred on the cell's centroid, zero-padded at the image border,
with the cell's own mask beside it. Its key is the SHA-256 of the crop's pixels and mask: equal pixels give
equal keys wherever the image lies, so per-cell features are cached by it (`phenotype.models.FeatureCache`)
and the no-leak check compares keys (`phenotype.cv`).

Co-culture cells with predicted instances (`phenotype.segmentation: classical`, or `unet` / `stardist`: the
masks `segment predict` wrote for the fold that tests the image) take the true type of the true cell they match one-to-one at IoU >= 0.5 (StarDist's matching, `analysis.matching`); an unmatched
predicted cell has no true type (a false detection) and a true cell no prediction matched is a miss.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from analysis.classical import otsu_watershed
from analysis.matching import THRESH
from prompts.images import load_image
from prompts.pairs import load_mask

from .data import SourceImage

GIVEN, CLASSICAL, UNET, STARDIST = "given", "classical", "unet", "stardist"
PREDICTED = (UNET, STARDIST)  # instances from the segmentation task's model, trained per fold (`phenotype.segmented`)


@dataclass
class Cell:
    """One cell: where it is, its true type (None when unknown) and its crop.

    pixels: (S, S, C) uint8, C = 1 (grayscale) or 3; mask: (S, S) bool, the cell's own pixels.
    """

    image: str
    label: int
    y: float
    x: float
    area: int
    true_type: str | None
    pixels: np.ndarray
    mask: np.ndarray
    key: str


@dataclass
class CellSet:
    """The cells of one image from one source (its mask or the classical floor), with the instance labels."""

    image: str
    labels: np.ndarray  # (H, W) int32
    cells: list[Cell]


def image_array(path, reading) -> np.ndarray:
    """The image as the study reads it (under `reading`, the data section's rule): (H, W, C) uint8, C = 1 for
    grayscale, 3 for colour."""
    arr = np.asarray(load_image(path, reading), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def crop_key(pixels: np.ndarray, mask: np.ndarray) -> str:
    """SHA-256 (hex) of a crop's shape, pixels and mask."""
    h = hashlib.sha256(f"{pixels.shape}|".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()


def cut(image: np.ndarray, labels: np.ndarray, label: int, y: float, x: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (size, size, C) crop of `image` and the (size, size) mask of `label`, centred on (y, x), zero-padded.

    Parameters
    ----------
    image : ndarray, shape (H, W, C), uint8
    labels : ndarray, shape (H, W), int
    label : int
        The cell's id in `labels`.
    y, x : float
        Centre in pixels (row, column).
    size : int
        Side of the crop in pixels.
    """
    top, left = int(round(y)) - size // 2, int(round(x)) - size // 2
    h, w = labels.shape
    pixels = np.zeros((size, size, image.shape[2]), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
    if y1 > y0 and x1 > x0:
        pixels[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
        mask[y0 - top:y1 - top, x0 - left:x1 - left] = labels[y0:y1, x0:x1] == label
    return pixels, mask


def cells_of(name: str, image: np.ndarray, labels: np.ndarray, types: dict[int, str | None], size: int) -> CellSet:
    """Every labelled cell of one image as a `Cell` (labels in increasing order); types: label -> true type."""
    from scipy import ndimage as ndi

    ids = np.unique(labels[labels > 0])
    centres = ndi.center_of_mass(np.ones_like(labels), labels, ids) if ids.size else []
    areas = np.bincount(labels.ravel())
    cells = []
    for label, (y, x) in zip(ids.tolist(), centres):
        pixels, mask = cut(image, labels, label, y, x, size)
        cells.append(Cell(name, int(label), float(y), float(x), int(areas[label]), types.get(int(label)), pixels, mask,
                          crop_key(pixels, mask)))
    return CellSet(name, labels, cells)


def classical_labels(image: np.ndarray, min_size: int, min_distance: int) -> np.ndarray:
    """Instances by the classical floor (Otsu + watershed) of an (H, W, C) image."""
    return otsu_watershed(image[..., 0] if image.shape[2] == 1 else image, min_size=min_size, min_distance=min_distance)


def matched_types(true_labels: np.ndarray, true_types: dict[int, str], pred_labels: np.ndarray) -> dict[int, str | None]:
    """{predicted label: true type of the true cell it matches one-to-one at IoU >= 0.5} (unmatched: absent)."""
    from scipy.optimize import linear_sum_assignment

    from analysis.matching import iou_matrix

    t_ids = np.unique(true_labels[true_labels > 0])
    p_ids = np.unique(pred_labels[pred_labels > 0])
    if not t_ids.size or not p_ids.size:
        return {}
    iou = iou_matrix(true_labels, pred_labels)
    n = min(iou.shape)
    rows, cols = linear_sum_assignment(-(iou >= THRESH).astype(float) - iou / (2 * n))
    return {int(p_ids[c]): true_types.get(int(t_ids[r])) for r, c in zip(rows, cols) if iou[r, c] >= THRESH}


def source_cells(im: SourceImage, size: int, segmentation: str, min_size: int, min_distance: int, reading) -> CellSet:
    """The cells of one source image.

    Monocultures: the given mask, else the classical floor; every cell gets the folder's type. Co-cultures:
    the given mask with the annotated types (`segmentation: given`), or the classical floor with each
    predicted cell typed by its matched true cell (`classical`, or images without masks).
    """
    image = image_array(im.image, reading)
    if im.is_mono:
        labels = load_mask(im.mask) if im.mask is not None else classical_labels(image, min_size, min_distance)
        return cells_of(im.name, image, labels, {int(v): im.mono_type for v in np.unique(labels[labels > 0])}, size)
    if im.mask is not None and segmentation == GIVEN:
        return cells_of(im.name, image, load_mask(im.mask), dict(im.cell_types or {}), size)
    pred = classical_labels(image, min_size, min_distance)
    types = matched_types(load_mask(im.mask), im.cell_types or {}, pred) if im.mask is not None and im.cell_types else {}
    return cells_of(im.name, image, pred, types, size)


def predicted_cells(im: SourceImage, pred: np.ndarray, size: int, reading) -> CellSet:
    """The cells of a co-culture image as the segmenter found them (`pred`: (H, W) instance ids of a predicted mask),
    each typed by the true cell it matches one-to-one at IoU >= 0.5 (when the image has a true mask and types)."""
    from prompts.errors import UserError

    image = image_array(im.image, reading)
    pred = np.asarray(pred).astype(np.int32)
    if pred.shape != image.shape[:2]:
        raise UserError(f"the predicted mask of {im.name} is {pred.shape[1]}x{pred.shape[0]} px, the image "
                        f"{image.shape[1]}x{image.shape[0]}; segment the images again (`python -m segment predict`)")
    types = matched_types(load_mask(im.mask), im.cell_types or {}, pred) if im.mask is not None and im.cell_types else {}
    return cells_of(im.name, image, pred, types, size)


def truth_cells(im: SourceImage, size: int, reading) -> CellSet:
    """The annotated cells of a co-culture image (its given mask and types): what a regime trains on."""
    return cells_of(im.name, image_array(im.image, reading), load_mask(im.mask), dict(im.cell_types or {}), size)
