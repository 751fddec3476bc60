"""Image–mask pairs the toolkit makes itself, for tests, benchmarks and the offline demo.

- `make_blob_pairs`: stained round and elliptic cells with texture and a darker nucleus on a plain
  light background, with their 16-bit instance masks. Cells do not overlap (each is placed where
  its ellipse is free), so the mask is exact. Not real data.
- `write_threshold_pairs`: pairs from real stained micrographs on a plain background (e.g.
  ../shared/data/pbc3): Otsu threshold of the darkness, small specks removed, connected components
  as instances. Good enough as stand-in annotations for stained cells; not expert masks.

Both write `OUT/images/<name>.png` (8-bit RGB) + `OUT/masks/<name>.png` (16-bit labels), the
layout `prompts.pairs.read_pairs` reads; existing files are kept, so re-runs are free.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_path
from .pairs import IMAGES_DIR, MASKS_DIR

BACKGROUND_RGB = (232, 226, 236)
CELL_RGB = (150, 100, 175)
NUCLEUS_RGB = (80, 40, 120)


def save_mask_png(path, mask: np.ndarray) -> None:
    """Write an instance mask as a 16-bit grayscale PNG (atomic). mask: (H, W) ints in 0..65535."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise ValueError(f"mask labels must lie in 0..65535 for a 16-bit PNG, got {mask.min()}..{mask.max()}")
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint16)).save(tmp, format="PNG")


def save_rgb_png(path, rgb: np.ndarray | Image.Image, **pnginfo) -> None:
    """Write an 8-bit RGB PNG (atomic)."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, np.uint8), mode="RGB")
    with atomic_path(path) as tmp:
        img.convert("RGB").save(tmp, format="PNG", **pnginfo)


def blob_scene(size: int, rng: np.random.Generator, n_cells: int | None = None,
               radius: tuple[float, float] = (0.06, 0.11)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 (size, size, 3), int32 instance mask (size, size)).

    radius: cell semi-axes as fractions of `size` (min, max); n_cells: cells attempted (default
    from the area: about 35 % coverage). Each cell is an ellipse kept only where it overlaps no
    earlier cell, so ids are 1..N without gaps and every cell is whole.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), np.int32)
    shade = np.zeros((size, size), np.float32)  # 0 background, 1 cytoplasm, 2 nucleus
    mean_r = np.mean(radius) * size
    n_cells = n_cells if n_cells is not None else max(1, int(0.35 * size * size / (np.pi * mean_r * mean_r)))
    next_id = 1
    for _ in range(n_cells * 4):  # attempts: free spots get rarer as the scene fills
        if next_id > n_cells:
            break
        a, b = rng.uniform(*radius, size=2) * size
        cy, cx = rng.uniform(0, size, 2)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        d = u * u + v * v
        inside = d < 1.0
        if inside.sum() < 9 or (mask[inside] != 0).any():
            continue
        mask[inside] = next_id
        shade[inside] = 1.0
        shade[d < rng.uniform(0.12, 0.3)] = 2.0
        next_id += 1
    return _paint(shade, rng), mask


def _paint(shade: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB from the shade map: plain background, textured cytoplasm, darker nucleus, slight blur."""
    from scipy import ndimage

    colours = np.array([BACKGROUND_RGB, CELL_RGB, NUCLEUS_RGB], np.float32)
    rgb = colours[shade.astype(np.int64)]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shade.shape).astype(np.float32), 1.2) * 40.0
    rgb += (shade > 0)[..., None] * texture[..., None]
    rgb += rng.normal(0, 3.0, rgb.shape)  # camera noise everywhere
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.7, 0.7, 0))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def make_blob_pairs(out_dir: str | os.PathLike, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write `n` blob scenes as OUT/images/blob_<i>.png + OUT/masks/blob_<i>.png; returns OUT.

    Each scene has its own generator seeded by (seed, i), so scene i is the same whatever `n` is.
    """
    out = Path(out_dir)
    for i in range(n):
        image_path = out / IMAGES_DIR / f"blob_{i:03d}.png"
        mask_path = out / MASKS_DIR / f"blob_{i:03d}.png"
        if image_path.exists() and mask_path.exists():
            continue
        rgb, mask = blob_scene(size, np.random.default_rng([seed, i]))
        save_mask_png(mask_path, mask)  # mask first: an image is never left without its mask
        save_rgb_png(image_path, rgb)
    return out


def threshold_mask(rgb: np.ndarray, min_area: int = 30) -> np.ndarray:
    """Instances of stained cells on a plain light background: int32 (H, W) labels 1..N.

    Otsu threshold of the darkness (255 - the mean of the channels), holes filled, specks under
    `min_area` px removed, then connected components.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    gray = np.asarray(rgb, np.float32)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    darkness = 255.0 - ndimage.gaussian_filter(gray, 1.0)
    fg = darkness > threshold_otsu(darkness)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(fg, iterations=1))
    fg = remove_small_objects(fg, max_size=min_area - 1) if _skimage_has_max_size() else remove_small_objects(fg, min_area)
    return label(fg, connectivity=1).astype(np.int32)


def _skimage_has_max_size() -> bool:
    """scikit-image 0.26 renamed remove_small_objects' `min_size` (exclusive of the size) to `max_size`."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def write_threshold_pairs(images, out_dir: str | os.PathLike, size: int | None = None, reading=None) -> Path:
    """Pairs from real stained micrographs: OUT/images/<stem>.png + OUT/masks/<stem>.png; returns OUT.

    images: image files (stems must differ); size: centre-crop to the shortest side and resize to
    `size` x `size` first (None: keep). Masks come from `threshold_mask`. reading: the rule the images are
    read with (None: the default rule; a demo-data maker, not a study step).
    """
    from .images import center_crop, load_image, resize_shortest_side
    from .normalize import DEFAULT

    out = Path(out_dir)
    for path in images:
        path = Path(path)
        image_path, mask_path = out / IMAGES_DIR / f"{path.stem}.png", out / MASKS_DIR / f"{path.stem}.png"
        if image_path.exists() and mask_path.exists():
            continue
        img = load_image(path, reading or DEFAULT).convert("RGB")
        if size is not None:
            img = center_crop(resize_shortest_side(img, size), size)
        rgb = np.asarray(img)
        save_mask_png(mask_path, threshold_mask(rgb))
        save_rgb_png(image_path, rgb)
    return out
