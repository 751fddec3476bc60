"""`segment predict`: train the segmentation task's model on a list of image-mask pairs, predict other images.

The same model code and settings as `segment cv` (`segment.model` unet or stardist, `segment.backbone`,
`weights`, `image_size`, `epochs`, `batch_size`, `learning_rate`, `augment`, `min_size`, `seed`; or the
classical floor `otsu-watershed`), trained once on the pairs of `--train` (`prompts.segmented` train.csv) and
applied to the images of `--images` (test.csv) at each image's own size, as `segment cv` predicts a test
pair. Written into `--out` (never inside the data folder, never over a file the toolkit did not write):

    OUT/<name less its extension>.tif   uint16 instance ids (0 background), atomically
    OUT/segmenter.json                  the model settings, the sha256 of every training image and mask and
                                        of every predicted image, and the loss per epoch

A test image among the training pairs (same path or same bytes) is refused before anything is trained.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from prompts import fingerprint
from prompts.errors import UserError
from prompts.guard import check_output_dir, check_outputs
from prompts.segmented import (
    RECORD,
    find_test_image_in_training,
    mask_name,
    mask_path,
    read_test_images,
    read_train_pairs,
    test_image_hashes,
)

log = logging.getLogger(__name__)
COMMAND = "segment predict"
# segment settings the prediction depends on (recorded, so a reader can tell which segmenter made the masks)
MODEL_KEYS = ("model", "pretrained", "backbone", "weights", "image_size", "epochs", "batch_size", "learning_rate", "augment",
              "min_size", "seed")


@dataclasses.dataclass(frozen=True)
class _Pair:
    """A training pair as the model code reads it (image, mask, sha256 key)."""

    image: Path
    mask: Path
    key: str


def check_no_leak(train: list[tuple[Path, Path]], test: list[tuple[str, Path]]) -> dict[str, str]:
    """{test image name: its sha256}; refuses (one line) a training image or mask with a test image's path or bytes."""
    test_sha = test_image_hashes(test)
    hit = find_test_image_in_training(train, test, test_sha)
    if hit:
        raise UserError(f"--train: {hit[0]} is the test image {hit[1]} (same path or bytes); the segmenter never trains "
                        "on an image it predicts: write the lists again with `python -m phenotype pairs`")
    return test_sha


def mask_folders(names: list[str]) -> dict[str, list[str]]:
    """{folder relative to OUT ('.' for OUT itself): [file names]} of the predicted masks' relative paths."""
    from pathlib import PurePosixPath

    out: dict[str, list[str]] = {}
    for n in names:
        rel = PurePosixPath(n)
        out.setdefault(rel.parent.as_posix(), []).append(rel.name)
    return out


def predict_instances(seg, train: list[tuple[Path, Path]], images: list[Path], reading, mask_kind: str = "auto",
                      progress: bool = False) -> tuple[list[np.ndarray], list[float], dict]:
    """Train `seg.model` on `train` pairs, predict `images` at their own size.

    Parameters
    ----------
    seg : prompts.schema.segment.SegmentSection
        The model settings (`MODEL_KEYS`).
    train : list of (image path, mask path)
        The training pairs.
    images : list of Path
        The images to segment.
    reading : prompts.normalize.Reading
        The data section's reading rule (every image is read with it).
    mask_kind : str
        How masks are read (`data.masks`: auto, instance or binary).

    Returns
    -------
    (list of ndarray (H, W) int32, list of float, dict)
        Instances per image (0 background), the loss per epoch, and what training did.
    """
    from .models import predict_floor

    if seg.model == "otsu-watershed":
        return predict_floor(images, seg.min_size, reading), [], {"note": "classical floor: no training"}
    items = [_Pair(Path(i), Path(m), fingerprint.file_sha256(i) + fingerprint.file_sha256(m)) for i, m in train]
    job = SimpleNamespace(train=items, test=[SimpleNamespace(image=Path(p)) for p in images])
    seed = seg.seed * 1000
    if seg.model == "stardist":
        from .stardist_model import train_and_predict

        return train_and_predict(seg, job, seed, mask_kind, reading)
    return _unet(seg, job, seed, reading, mask_kind, progress)


def _unet(seg, job, seed: int, reading, mask_kind: str, progress: bool) -> tuple[list[np.ndarray], list[float], dict]:
    """The U-Net of `segment cv` (`segment.model.Trainer`): trained on pairs resized to image_size, each image
    predicted at that scale and its probabilities resized back to its own size before instances are found."""
    from prompts.pairs import image_shape

    from .model import Trainer, targets
    from .native import unet_native_instances
    from .pixels import PairCache, load_image_array

    cache = PairCache(seg.image_size, mask_kind, reading)
    cache.load(job.train, progress)
    x, y = cache.arrays(job.train)
    trainer = Trainer(seg.backbone, seg.weights, seg.image_size, seg.seed, seg.learning_rate)
    losses = trainer.train(x, np.stack([targets(m) for m in y]), seg.epochs, seg.batch_size, seed, seg.augment)
    preds = []
    for i in range(0, len(job.test), 64):  # bounded memory
        part = job.test[i:i + 64]
        x_test = np.stack([load_image_array(it.image, seg.image_size, reading) for it in part]).astype(np.float32)
        probs = trainer.predict(x_test, seg.batch_size)
        preds += [unet_native_instances(p, image_shape(it.image), seg.image_size, seg.min_size) for p, it in zip(probs, part)]
    training = {"resized_to": [seg.image_size, seg.image_size],
                "note": f"trained on pairs resized to {seg.image_size}x{seg.image_size} px; images predicted at that scale, "
                        "probabilities resized back to each image's own size"}
    return preds, losses, training


def run_predict(data_section, seg, train_csv, images_csv, out, progress: bool = False) -> dict:
    """The Python API of `segment predict`: check, train, predict, write (see the module docstring).

    Parameters
    ----------
    data_section : prompts.schema.data.DataSection
        The data folder (outputs never go inside it), the reading rule and `data.masks`.
    seg : prompts.schema.segment.SegmentSection
        The model settings.
    train_csv, images_csv : path
        The training pairs (image,mask) and the images to predict (name,image), `prompts.segmented`'s lists.
    out : path
        The folder of the predicted masks and the record.

    Returns
    -------
    dict
        The record written to OUT/segmenter.json.
    """
    from prompts.normalize import from_section

    from .model import check_backbone, check_image_size, normalize_weights

    train, test = read_train_pairs(train_csv), read_test_images(images_csv)
    out = check_output_dir(out, data=data_section.data, flag="--out")
    for _, image in test:  # nor beside the images it reads, when they lie outside the data folder
        check_output_dir(out, data=Path(image).parent, flag="--out")
    if seg.model == "unet":
        check_backbone(seg.backbone)
        check_image_size(seg.image_size)
        normalize_weights(seg.weights)
    elif seg.model == "stardist":
        from .stardist_model import import_stardist

        import_stardist()
    test_sha = check_no_leak(train, test)
    by_folder = mask_folders([mask_name(n) for n, _ in test])
    check_outputs(out, [*sorted({n.split("/")[0] for n in (mask_name(n) for n, _ in test)}), RECORD], flag="--out")
    for folder, files in by_folder.items():
        check_outputs(out / folder, files, flag="--out")
    start = time.perf_counter()
    reading = from_section(data_section)
    preds, losses, training = predict_instances(seg, train, [p for _, p in test], reading, data_section.masks, progress)
    fingerprint.claim(out, [*sorted({n.split("/")[0] for n in (mask_name(n) for n, _ in test)}), RECORD], COMMAND)  # after training: a failure writes nothing
    for folder, files in by_folder.items():
        fingerprint.claim(out / folder, files, COMMAND)
    from .native import write_prediction

    for (name, _), labels in zip(test, preds):
        write_prediction(mask_path(out, name), labels)
    h = fingerprint.file_sha256
    record = {"settings": {k: getattr(seg, k) for k in MODEL_KEYS}, "reading": reading.record(), "masks": data_section.masks,
              "train": [{"image": str(i), "image_sha256": h(i), "mask": str(m), "mask_sha256": h(m)} for i, m in train],
              "test": [{"name": n, "image": str(p), "image_sha256": test_sha[n], "mask": mask_name(n),
                        "cells": int(len(np.unique(labels[labels > 0])))} for (n, p), labels in zip(test, preds)],
              "losses": [round(float(v), 6) for v in losses], "training": training,
              "seconds": round(time.perf_counter() - start, 3)}
    fingerprint.write_json(out / RECORD, record, COMMAND)
    return record
