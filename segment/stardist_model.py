"""`segment.model: stardist`: StarDist 2D (Schmidt et al. 2018) trained on a fold's pairs, predicting native images.

StarDist runs on the project's TensorFlow/Keras 3 stack (`stardist` 0.9 with `csbdeep` 0.8; the
`dev` extra installs it). Per job:
- images are read under the study's reading rule, averaged to one grey channel and normalised
  per image to their 1st..99.8th percentiles (StarDist's own recipe); masks come from the one mask
  reader (`data.masks`), holes filled;
- training draws random patches of `segment.image_size` px (smaller when the images are smaller,
  a multiple of 16) at native resolution, with random flips and 90-degree turns when
  `segment.augment`; `segment.epochs`, `segment.batch_size`, `segment.learning_rate` apply and
  an epoch is one pass over the training pairs' count in patches;
- from scratch (32 rays, grid 2, U-Net depth 3; `segment.weights: tiny` -> a narrow depth-2 net for
  smoke runs), or fine-tuned from `segment.pretrained` (a StarDist model folder, copied first: the
  user's folder is never written);
- prediction: `predict_instances` on each whole test image at its own size, StarDist's default
  thresholds (probability 0.5, NMS 0.4).
Weights live in a temporary folder deleted after the job; nothing is written into OUT but the
result and the predicted masks (by the caller).
"""
from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from prompts.errors import UserError

N_RAYS = 32
GRID = (2, 2)
MULTIPLE = 16  # patch sides: a multiple of grid x 2^depth


def import_stardist():
    """The StarDist2D and Config2D classes, or a UserError saying how to install StarDist."""
    try:
        from stardist.models import Config2D, StarDist2D
    except ImportError as err:
        raise UserError(f"segment.model stardist needs the stardist package ({err}); pip install 'stardist>=0.9' "
                        "(it runs on the pinned TensorFlow) or use segment.model: unet") from None
    return StarDist2D, Config2D


def grey_normalized(path, reading) -> np.ndarray:
    """(H, W) float32: the image under `reading` (the study's rule), mean of its channels, 1..99.8 percentiles -> 0..1."""
    from .native import load_image_native

    x = load_image_native(path, reading).astype(np.float32).mean(axis=-1)
    lo, hi = np.percentile(x, [1.0, 99.8])
    return ((x - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def patch_side(size: int, shapes: list[tuple[int, int]]) -> int:
    """The training patch side: `size` or the smallest image side, rounded down to a multiple of 16 (at least 16)."""
    side = min([size, *(min(s) for s in shapes)])
    return max(MULTIPLE, side // MULTIPLE * MULTIPLE)


def _pad_to(x: np.ndarray, side: int) -> np.ndarray:
    """Pad an image or mask with zeros (mask) / edge values (image) so both sides are at least `side`."""
    ph, pw = max(0, side - x.shape[0]), max(0, side - x.shape[1])
    if not (ph or pw):
        return x
    mode = "constant" if x.dtype.kind in "iu" else "edge"
    return np.pad(x, ((0, ph), (0, pw)), mode=mode)


def _augmenter(seed: int):
    rng = np.random.default_rng(seed)

    def aug(x, y):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k), np.rot90(y, k)
        if flip:
            x, y = x[:, ::-1], y[:, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    return aug


def _config(seg, side: int, n_train: int, Config2D):
    tiny = str(seg.weights).lower() == "tiny"
    return Config2D(n_rays=N_RAYS, grid=GRID, n_channel_in=1, train_patch_size=(side, side),
                    train_batch_size=seg.batch_size, train_epochs=seg.epochs,
                    train_steps_per_epoch=max(1, math.ceil(n_train / seg.batch_size)),
                    train_learning_rate=seg.learning_rate, unet_n_depth=2 if tiny else 3,
                    unet_n_filter_base=8 if tiny else 32, train_reduce_lr=None,
                    train_tensorboard=False)  # no event files in OUT; TensorBoard also fails where TF is hidden (USE_TF=0)


def build(seg, side: int, n_train: int, basedir: Path, seed: int):
    """A StarDist2D in `basedir`: from scratch, or a copy of `segment.pretrained` to fine-tune."""
    import keras

    StarDist2D, Config2D = import_stardist()
    keras.utils.set_random_seed(seed)
    if seg.pretrained:
        src = Path(seg.pretrained)
        if not (src / "config.json").is_file():
            raise UserError(f"segment.pretrained {src}: not a StarDist model folder (no config.json); give the folder "
                            "StarDist2D saved (config.json, thresholds.json, weights_best.h5)")
        shutil.copytree(src, basedir / "model")
        with contextlib.redirect_stdout(io.StringIO()):
            model = StarDist2D(None, name="model", basedir=str(basedir))
        model.config.train_epochs, model.config.train_batch_size = seg.epochs, seg.batch_size
        model.config.train_patch_size = (side, side)
        model.config.train_steps_per_epoch = max(1, math.ceil(n_train / seg.batch_size))
        return model
    with contextlib.redirect_stdout(io.StringIO()):
        return StarDist2D(_config(seg, side, n_train, Config2D), name="model", basedir=str(basedir))


def train_and_predict(seg, job, seed: int, mask_kind: str, reading) -> tuple[list[np.ndarray], list[float], dict]:
    """Train StarDist on job.train and predict job.test at native size -> (instances per test pair, loss per epoch, note)."""
    from stardist import fill_label_holes

    from prompts.masks import read_mask

    x = [grey_normalized(it.image, reading) for it in job.train]
    y = [fill_label_holes(read_mask(it.mask, mask_kind).labels) for it in job.train]
    side = patch_side(seg.image_size, [a.shape for a in x])
    x, y = [_pad_to(a, side) for a in x], [_pad_to(b, side) for b in y]
    with tempfile.TemporaryDirectory(prefix="cellsynth-stardist-") as tmp:
        model = build(seg, side, len(x), Path(tmp), seed)
        n_val = max(1, min(len(x) // 4, 4))  # StarDist wants validation pairs: a few training pairs (never test pairs)
        with contextlib.redirect_stdout(io.StringIO()):
            history = model.train(x, y, validation_data=(x[:n_val], y[:n_val]),
                                  augmenter=_augmenter(seed) if seg.augment else None, seed=seed,
                                  epochs=seg.epochs, steps_per_epoch=model.config.train_steps_per_epoch)
            preds = [model.predict_instances(grey_normalized(it.image, reading), show_tile_progress=False)[0].astype(np.int32)
                     for it in job.test]
    losses = [float(v) for v in history.history.get("loss", [])]
    origin = f"fine-tuned from {seg.pretrained}" if seg.pretrained else "trained from scratch"
    training = {"resized_to": None, "patch": [side, side],
                "note": f"StarDist 2D {origin} on {side}x{side} px patches at native resolution; test images predicted "
                        "whole at their own size"}
    return preds, losses, training
