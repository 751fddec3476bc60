"""One training run: a model, a way to fetch a batch for an epoch, labels -> trained model.

The same loop trains the head on cached features and the full model on pixels,
so the two paths differ only in what `x_for_epoch` returns.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (C * n_c) per class (0 for absent classes). y: (n,) int."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = np.zeros(n_classes)
    present = counts > 0
    w[present] = len(y) / (present.sum() * counts[present])
    return w


def train(
    model,
    x_for_epoch: Callable[[int, np.ndarray], np.ndarray],
    y: np.ndarray,
    n_classes: int,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_classes: bool = False,
) -> list[float]:
    """Mini-batch training with a seeded shuffle per epoch.

    x_for_epoch(epoch, idx) -> inputs of the training items idx (any shape the
    model takes); y: (n,) class indices. Returns the mean loss per epoch.
    """
    rng = np.random.default_rng(seed)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    sw_class = class_weights(y, n_classes) if weight_classes else None
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            sw = None if sw_class is None else sw_class[y[idx]].astype(np.float32)
            loss = model.train_on_batch(x_for_epoch(epoch, idx), onehot[idx], sample_weight=sw)
            total += float(np.asarray(loss if np.ndim(loss) == 0 else loss[0])) * len(idx)
        losses.append(total / max(1, len(y)))
    return losses


def predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (n, C), batch by batch through the compiled predict step (little per-call overhead)."""
    out = [np.asarray(model.predict_on_batch(x[s : s + batch_size])) for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
