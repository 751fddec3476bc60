"""Pairs as arrays at the U-Net's size: images (S, S, 3) uint8 and instance masks (S, S) int32.

An image is decoded by the project's decoder (`prompts.images.load_image`: 16-bit scaled, grey
kept grey), resized to S x S (bilinear; non-square images are squashed, not cropped, so no cell
is lost), and grey is repeated into 3 channels. Its mask is resized with nearest neighbour, so
labels stay labels; metrics are computed at this size.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def load_image_array(path, size: int) -> np.ndarray:
    """(S, S, 3) uint8."""
    from prompts.images import load_image

    img = load_image(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) integer labels -> (S, S) int32, nearest neighbour."""
    im = Image.fromarray(np.asarray(labels).astype(np.int32), mode="I")
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.int32)


def load_mask_array(path, size: int) -> np.ndarray:
    """(S, S) int32 instance labels of a mask file (read with `prompts.pairs.load_mask`)."""
    from prompts.pairs import load_mask

    return resize_labels(load_mask(path), size)


class PairCache:
    """Arrays of every pair used, loaded once, addressed by the image's sha256 key."""

    def __init__(self, size: int):
        self.size = size
        self.images: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}

    def load(self, items, progress: bool = False) -> None:
        from tqdm import tqdm

        todo = {it.key: it for it in items if it.key not in self.images}
        for key, it in tqdm(todo.items(), desc="pairs", unit="pair", disable=not progress or not todo):
            self.images[key] = load_image_array(it.image, self.size)
            self.masks[key] = load_mask_array(it.mask, self.size)

    def arrays(self, items) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) float32 0..255 and (n, S, S) int32 labels."""
        x = np.stack([self.images[it.key] for it in items]).astype(np.float32)
        y = np.stack([self.masks[it.key] for it in items])
        return x, y
