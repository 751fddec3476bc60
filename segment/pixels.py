"""Pairs as arrays at the U-Net's size: images (S, S, 3) uint8 and instance masks (S, S) int32.

An image is decoded by the project's decoder (`prompts.images.load_image`: 16-bit scaled, grey
kept grey), resized to S x S (bilinear; non-square images are squashed, not cropped, so no cell
is lost), and grey is repeated into 3 channels. Its mask is read by the one mask reader
(`prompts.masks.read_mask`, `data.masks`: binary masks become cells) and resized with nearest
neighbour, so labels stay labels. This is the training size only: metrics are computed at each
test image's own size (`segment.native`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def load_image_array(path, size: int, reading) -> np.ndarray:
    """(S, S, 3) uint8: the image read under `reading` (the data section's `prompts.normalize.Reading`)."""
    from prompts.images import load_image

    img = load_image(path, reading).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) integer labels -> (S, S) int32, nearest neighbour."""
    im = Image.fromarray(np.asarray(labels).astype(np.int32), mode="I")
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.int32)


def load_mask_native(path, kind: str = "auto") -> np.ndarray:
    """(H, W) int32 instance labels of a mask file at its own size (`prompts.masks.read_mask`)."""
    from prompts.masks import read_mask

    return read_mask(path, kind).labels


def load_mask_array(path, size: int, kind: str = "auto") -> np.ndarray:
    """(S, S) int32 instance labels of a mask file (read with `prompts.masks.read_mask`)."""
    return resize_labels(load_mask_native(path, kind), size)


class PairCache:
    """Arrays of every pair used, loaded once, addressed by the image's sha256 key."""

    def __init__(self, size: int, mask_kind: str, reading):
        self.size, self.mask_kind, self.reading = size, mask_kind, reading  # reading: the data section's rule
        self.images: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.kinds: dict[str, str] = {}  # the mask kind decided per file ('instance' or 'binary')

    def load(self, items, progress: bool = False) -> None:
        from tqdm import tqdm

        todo = {it.key: it for it in items if it.key not in self.images}
        for key, it in tqdm(todo.items(), desc="pairs", unit="pair", disable=not progress or not todo):
            self.images[key] = load_image_array(it.image, self.size, self.reading)
            from prompts.masks import read_mask

            read = read_mask(it.mask, self.mask_kind)
            self.masks[key] = resize_labels(read.labels, self.size)
            self.kinds[key] = read.kind

    def arrays(self, items) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) float32 0..255 and (n, S, S) int32 labels."""
        x = np.stack([self.images[it.key] for it in items]).astype(np.float32)
        y = np.stack([self.masks[it.key] for it in items])
        return x, y
