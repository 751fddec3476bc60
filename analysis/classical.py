"""The classical floor of instance segmentation: Otsu threshold, then a distance-transform watershed.

It needs no training, so it is the floor every learned model is reported beside: a segmentation
model whose `real` baseline does not beat it has not learned. Per-cell phenotyping uses it to find
cells when no masks are given. The recipe is the one of CellProfiler's and scikit-image's
tutorials: threshold by Otsu, split touching objects by a watershed on the distance transform,
seeded at its local maxima.
"""
from __future__ import annotations

import numpy as np

NAME = "otsu-watershed"
DEFAULT_MIN_DISTANCE = 3  # px between two seeds: touching nuclei of ~8 px radius stay apart


def foreground(image: np.ndarray) -> np.ndarray:
    """Otsu's foreground of one image.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Intensities (any dtype); colour images are averaged over channels.

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where the pixel is brighter than Otsu's threshold (False everywhere on a flat image).
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3:
        x = x.mean(axis=-1)
    if x.size == 0 or not np.isfinite(x).all() or x.max() == x.min():
        return np.zeros(x.shape[:2], dtype=bool)
    return x > threshold_otsu(x)


def split_touching(mask: np.ndarray, min_distance: int = DEFAULT_MIN_DISTANCE) -> np.ndarray:
    """Instances of a binary mask: connected components, touching blobs split by a distance-transform watershed.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
    min_distance : int
        Smallest distance in px between two seeds (local maxima of the distance transform).

    Returns
    -------
    ndarray of int32, shape (H, W)
        0 = background, 1..N = instances.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    components, _ = ndi.label(mask)
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=max(1, int(min_distance)), labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # a component with no peak (a one-pixel line) keeps one seed of its own, so no object is lost
    seeded = np.unique(components[markers > 0])
    for c in np.setdiff1d(np.arange(1, components.max() + 1), seeded):
        ys, xs = np.nonzero(components == c)
        markers[ys[0], xs[0]] = markers.max() + 1
    labels = watershed(-distance, markers, mask=mask)
    return labels.astype(np.int32)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with instances under `min_size` px removed and the rest renumbered 1..N (int32)."""
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    if min_size > 0 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = np.nonzero(sizes < min_size)[0]
        labels = np.where(np.isin(labels, small[small > 0]), 0, labels)
    return relabel_sequential(labels.astype(np.int32))[0].astype(np.int32)


def otsu_watershed(image: np.ndarray, min_size: int = 0, min_distance: int = DEFAULT_MIN_DISTANCE) -> np.ndarray:
    """Instance labels of one image by the classical floor (Otsu, then a distance-transform watershed).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
    min_size : int
        Instances smaller than this many pixels are dropped.
    min_distance : int
        Smallest distance in px between the seeds of two touching objects.

    Returns
    -------
    ndarray of int32, shape (H, W)
        0 = background, 1..N = instances, at the image's own resolution.
    """
    return remove_small(split_touching(foreground(image), min_distance), min_size)
