"""Keras for every room that trains a network (classify, segment): imported once, quietly, when first needed.

TensorFlow is imported inside the function, never at module level, so that a command checks all of its
inputs (one line on stderr for a bad one) before TensorFlow's start-up costs seconds and prints lines.
"""
from __future__ import annotations

import os
import sys


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
