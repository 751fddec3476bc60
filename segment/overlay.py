"""Outline overlays: a test image with its true instances' outlines (green) and the predicted ones (magenta)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prompts.files import atomic_path

TRUE_RGB = (0, 220, 0)
PRED_RGB = (255, 0, 255)


def overlay_array(image: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(S, S, 3) image 0..255, (S, S) true and predicted labels -> (S, S, 3) uint8 with outlines drawn.

    Where both outlines meet the pixel is white, so agreement is visible at a glance.
    """
    from skimage.segmentation import find_boundaries

    out = np.clip(image, 0, 255).astype(np.uint8).copy()
    t = find_boundaries(true, mode="inner") & (true > 0)
    p = find_boundaries(pred, mode="inner") & (pred > 0)
    out[t] = TRUE_RGB
    out[p] = PRED_RGB
    out[t & p] = (255, 255, 255)
    return out


def write_overlay(path, image: np.ndarray, true: np.ndarray, pred: np.ndarray) -> Path:
    """Write the overlay as a PNG, atomically (twice the model's size, nearest neighbour, so outlines stay sharp)."""
    path = Path(path)
    arr = overlay_array(image, true, pred)
    img = Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.Resampling.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp)
    return path
