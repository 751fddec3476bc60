"""The models a segmentation study compares, behind one call: train on a job's pairs, predict its test images.

- `unet` (default): the Keras U-Net of `segment.model`, trained on pairs resized to
  `segment.image_size`; predictions are made at that scale and resized back to each image's own
  size before instances are found (`segment.native`).
- `stardist`: StarDist 2D (`segment.stardist_model`), trained from scratch on the fold's pairs at
  their own resolution (or fine-tuned from `segment.pretrained`), predicting native images.
- `otsu-watershed`: the classical floor (`analysis.classical.otsu_watershed`); no training. It is
  also scored beside every learned model on the `real` mix's test pairs.
"""
from __future__ import annotations

import numpy as np

MODELS = ("unet", "stardist", "otsu-watershed")


def floor_instances(image: np.ndarray, min_size: int) -> np.ndarray:
    """Instances (H, W) int32 of one image (H, W[, C]) by the classical floor, objects bright or dark.

    Otsu's threshold splits the pixels in two; the objects are the smaller side (cells cover less of
    a field than the background), so dark cells on a bright field (brightfield, stains) are
    inverted first. Fluorescence, where cells are bright, is read as is.
    """
    from analysis.classical import foreground, otsu_watershed

    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    if foreground(grey).mean() > 0.5:
        grey = grey.max() - grey
    return otsu_watershed(grey, min_size)


def predict_floor(images, min_size: int, reading) -> list[np.ndarray]:
    """Instances (H, W) int32 of each image (paths, read under `reading`) by Otsu + distance-transform watershed,
    at native size."""
    from .native import load_image_native

    return [floor_instances(load_image_native(p, reading), min_size) for p in images]


def _unet(runner, job, seed: int) -> tuple[list[np.ndarray], list[float], dict]:
    from .model import targets
    from .native import unet_native_instances

    s = runner.seg
    x, y = runner.cache.arrays(job.train)
    y_cls = np.stack([targets(m) for m in y])
    losses = runner.trainer.train(x, y_cls, s.epochs, s.batch_size, seed, s.augment)
    x_test, _ = runner.cache.arrays(job.test)
    probs = runner.trainer.predict(x_test, s.batch_size)
    from prompts.pairs import image_shape

    preds = [unet_native_instances(p, image_shape(it.image), s.image_size, s.min_size) for p, it in zip(probs, job.test)]
    training = {"resized_to": [s.image_size, s.image_size],
                "note": f"trained on pairs resized to {s.image_size}x{s.image_size} px; test images predicted at that scale, "
                        "probabilities resized back to each image's own size; instances matched at native resolution"}
    return preds, losses, training


def train_and_predict(runner, job, seed: int) -> tuple[list[np.ndarray], list[float], dict]:
    """(predicted instances per test pair at native size, loss per epoch, what training did) for `segment.model`."""
    model = runner.seg.model
    if model == "otsu-watershed":
        preds = predict_floor([it.image for it in job.test], runner.seg.min_size, runner.reading)
        return preds, [], {"resized_to": None, "note": "classical floor: no training"}
    if model == "stardist":
        from .stardist_model import train_and_predict as stardist_run

        return stardist_run(runner.seg, job, seed, runner.mask_kind, runner.reading)
    return _unet(runner, job, seed)
