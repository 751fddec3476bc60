"""Keras for every room that trains a network (classify, segment, phenotype): imported once, quietly, when first needed,
and the BatchNorm calibration that makes a random EfficientNet usable offline.

TensorFlow is imported inside the function, never at module level, so that a command checks all of its
inputs (one line on stderr for a bad one) before TensorFlow's start-up costs seconds and prints lines.
"""
from __future__ import annotations

import os
import sys

import numpy as np


def import_keras():
    """Import Keras (and its TensorFlow backend) without TensorFlow's start-up lines on stderr.

    TensorFlow's C++ core writes "All log messages before absl::InitializeLog()",
    oneDNN, CUDA and CPU-feature notices straight to file descriptor 2 while it
    loads and on its first operation, whatever TF_CPP_MIN_LOG_LEVEL says. A
    command's only stderr output should be its own (one line for a user error),
    so fd 2 points at /dev/null for that moment; Python exceptions still propagate.

    Returns
    -------
    module
        The `keras` module, devices initialised.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import keras

            keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # the first operation initialises the devices
            try:
                from absl import logging as absl_logging

                absl_logging.set_verbosity(absl_logging.ERROR)
            except ImportError:  # the torch backend does not bring absl
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


def calibrate_batchnorm(base, x: np.ndarray) -> None:
    """Set every BatchNormalization's moving statistics to its batch statistics on `x`.

    Randomly initialised EfficientNets output features of about 1e-6 (the signal
    shrinks block by block), which no head can learn from. One training-mode pass
    with momentum 0 gives a random network with unit-scale activations: useful
    offline (tests, benchmarks) where no ImageNet weights exist, never for a study.

    Parameters
    ----------
    base : keras.Model
        The network (nested models are walked); left frozen (`trainable = False`).
    x : ndarray, shape (n, S, S, 3), float 0..255
        The calibration inputs, n >= 2.
    """
    keras = import_keras()
    bns = [layer for layer in _all_layers(base) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [b.momentum for b in bns]
    base.trainable = True
    for b in bns:
        b.momentum = 0.0
    base(x.astype(np.float32), training=True)
    for b, m in zip(bns, momenta):
        b.momentum = m
    base.trainable = False


def _all_layers(model):
    """Every layer of a model, nested models' layers first."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        yield layer
