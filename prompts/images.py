"""The one image decoder of the project.

Policy (documented in the README):
- EXIF orientation is applied.
- 16-bit and 32-bit integer images are scaled linearly from their full range
  (0..65535) to 0..255; float images from 0..1. No per-image contrast stretch, so
  intensity differences between images survive.
- Grayscale (L, I;16, I, F, 1, LA) becomes mode "L"; colour (RGB, RGBA, P, CMYK,
  YCbCr) becomes "RGB". Alpha is dropped: micrographs carry no transparency.
- An RGB image whose three channels are equal is reported as grayscale by
  `is_grayscale`, so a grayscale study stays grayscale downstream.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_GRAY_MODES = {"L", "LA", "La", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(str(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale to mode L by linear scaling of the dtype's full range."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.clip(arr, 0.0, 1.0) * 255.0
    elif arr.dtype.itemsize >= 2:
        arr = arr.astype(np.float64) * (255.0 / 65535.0)
        arr = np.clip(arr, 0, 255)
    return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into a PIL image of mode "L" or "RGB" (8-bit).

    Raises `UserError` naming the file when it cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return _to_8bit(im)
            if mode in _GRAY_MODES:
                return im.convert("L")
            return im.convert("RGB")
    except Image.DecompressionBombError as err:
        raise UserError(
            f"image {path} is too large to decode safely ({err}); shrink or tile it, or remove it "
            "(or pass --skip-bad-images to skip it)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(
            f"cannot decode image {path}: {err.__class__.__name__}: {err}; "
            "replace or remove the file, or pass --skip-bad-images"
        ) from None


def is_grayscale(img: Image.Image) -> bool:
    """True for mode L, or RGB whose channels are identical (grayscale saved as RGB)."""
    if img.mode == "L":
        return True
    arr = np.asarray(img.convert("RGB"))
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def resize_shortest_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side equals `size` (bicubic down/up, aspect kept)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return img
    return img.resize(new, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))

