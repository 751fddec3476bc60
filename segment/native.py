"""Scoring at each test image's own resolution, per image and per set, and the predicted masks as files.

The U-Net trains on pairs resized to `segment.image_size` (S x S; the results say so). A test
image is predicted at the same scale the network trained at (resized to S x S, as in training),
and its class probabilities are resized back to the image's own H x W (bilinear) before the
instances are found: instances are made, matched and counted at native resolution against the
mask as stored. Models that need no resizing (the classical floor, StarDist) predict the native
image directly.

A pair's *set* is its image's folder less a trailing images folder (`data.images_dir`, default
`images`): `cls_a/images/x.png` -> `cls_a`, `01/t000.tif` -> `01`, `images/x.png` -> `all`; the
class, sequence or sub-folder a lab filed it under.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from prompts.files import atomic_path

from . import metrics

ALL_SET = "all"
PREDICTIONS_DIR = "predictions"


def set_of(name: str, images_dir: str = "images") -> str:
    """The set of a pair from its data-relative image name (see the module docstring)."""
    parent = PurePosixPath(name).parent
    parts = list(parent.parts)
    if parts and parts[-1] == images_dir:
        parts = parts[:-1]
    return "/".join(parts) or ALL_SET


def load_image_native(path, reading) -> np.ndarray:
    """(H, W, 3) uint8: the image under `reading` (the study's rule), at its own size (grey repeated into 3 channels)."""
    from prompts.images import load_image

    return np.asarray(load_image(path, reading).convert("RGB"), dtype=np.uint8)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(S, S, C) float probabilities -> (H, W, C) float32, bilinear per channel."""
    h, w = shape
    out = [np.asarray(Image.fromarray(probs[..., c].astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
           for c in range(probs.shape[-1])]
    return np.stack(out, axis=-1)


def native_min_size(min_size: int, size: int, shape: tuple[int, int]) -> int:
    """`min_size` px at the training size S x S expressed at the native H x W (scaled by the area ratio)."""
    return max(1, round(min_size * shape[0] * shape[1] / (size * size)))


def unet_native_instances(probs: np.ndarray, shape: tuple[int, int], size: int, min_size: int) -> np.ndarray:
    """Instances (H, W) int32 of the U-Net's (S, S, 3) probabilities for an image of native `shape`."""
    from .model import instances

    return instances(resize_probs(probs, shape), native_min_size(min_size, size, shape))


def contrast_stretch(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """(H, W, 3) uint8 stretched for display so its `low`..`high` percentiles span 0..255 (dim 8-bit images become visible)."""
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        return image
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def prediction_path(out: Path, tree: str, mix: str, fold: str, name: str) -> Path:
    """OUT/predictions/<mix>/<fold>/<name less its extension>.tif (synthetic trees: <tree>/<mix>); inside OUT."""
    mix_dir = mix if tree == "real" else f"{tree}/{mix}"
    rel = PurePosixPath(name).with_suffix(".tif")
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"pair name {name!r} is not a relative path inside the data folder")
    return out / PREDICTIONS_DIR / mix_dir / fold / rel


def write_prediction(path: Path, labels: np.ndarray) -> Path:
    """A predicted mask as a 16-bit TIFF (uint16 ids; 32-bit when there are more than 65535 cells), atomically."""
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
    return path


def per_image_rows(names: list[str], truths: list[np.ndarray], preds: list[np.ndarray], kinds: list[str],
                   images_dir: str = "images") -> list[dict]:
    """One row per test image: name, set, mask kind, size, counts true/predicted, AP50, F1, mean matched IoU, PQ."""
    rows = []
    for name, t, p, kind in zip(names, truths, preds, kinds):
        s = metrics.score_image(t, p)
        rows.append({"name": name, "set": set_of(name, images_dir), "mask_kind": kind, "height": int(t.shape[0]), "width": int(t.shape[1]),
                     "n_true": s["n_true"], "n_pred": s["n_pred"], "ap50": s["ap50"], "ap50_90": s["ap50_90"], "f1": s["f1"],
                     "mean_iou": s["mean_iou"], "pq": s["pq"], "tp": s["tp"], "fp": s["fp"], "fn": s["fn"]})
    return rows


def per_set_scores(names: list[str], truths: list[np.ndarray], preds: list[np.ndarray],
                   images_dir: str = "images") -> dict[str, dict]:
    """Pooled metrics (`metrics.score_set`) of each set of the test images, by set name."""
    by: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by.setdefault(set_of(name, images_dir), []).append(i)
    return {s: metrics.score_set([(truths[i], preds[i]) for i in idx]) for s, idx in sorted(by.items())}


def overlay_picks(names: list[str], per_set: int, images_dir: str = "images") -> list[int]:
    """Indices of the first `per_set` test images of every set (overlays for every set, not only the first)."""
    seen: dict[str, int] = {}
    picks = []
    for i, name in enumerate(names):
        s = set_of(name, images_dir)
        if seen.get(s, 0) < per_set:
            seen[s] = seen.get(s, 0) + 1
            picks.append(i)
    return picks
