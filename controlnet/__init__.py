"""Mask-conditioned generation: ControlNets per fold trained on image–mask pairs, and synthetic pairs from them.

`python -m controlnet train` (controlnet/train.py), `python -m controlnet generate` (controlnet/sample.py),
the conditions made from training masks (controlnet/masks.py). See controlnet/README.md.
"""
import os

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow in this torch room
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
