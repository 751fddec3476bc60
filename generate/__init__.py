"""Prompt-driven sampling of synthetic images (PyTorch, diffusers).

Never imports TensorFlow or Keras: transformers is told not to look for them.
"""
import os

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_TORCH", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
