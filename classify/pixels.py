"""The classifier's image policy: any image file becomes a 3-channel 0..255 array.

Policy (documented in docs/rooms/classify.md):
1. Decode with the project's one decoder (`prompts.images.load_image`): 16-bit is
   scaled linearly to 8-bit, EXIF orientation applied, alpha dropped.
2. Resize so that the *shorter* side equals the input size (aspect kept), then
   take the centre square. A 2048x1536 micrograph keeps its central 1536x1536
   region scaled to 600x600; no stretching.
3. Grayscale (mode L) is replicated to three channels; RGB stays RGB.
4. Values stay 0..255 (float32 when fed to Keras): EfficientNet rescales inside
   the model.
"""
from __future__ import annotations

import numpy as np

from prompts.images import center_crop, load_image, resize_shortest_side


def image_to_array(path, size: int, reading) -> np.ndarray:
    """Read one image file under `reading` (the data section's `prompts.normalize.Reading`) -> uint8 (size, size, 3)."""
    img = load_image(path, reading)
    img = center_crop(resize_shortest_side(img, size), size)
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return arr


def load_pixels(paths, size: int, reading, progress: bool = False) -> np.ndarray:
    """Read many image files under `reading` -> uint8 array (n, size, size, 3)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc=f"images {size}px", unit="img", leave=False)
    for i, p in enumerate(it):
        out[i] = image_to_array(p, size, reading)
    return out
